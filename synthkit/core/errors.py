"""The one error type for user mistakes: the CLI shows it as a single line and exits with 2."""


class UserError(Exception):
    """A mistake in the user's input (a path, an option, a file): say what was wrong and what to do."""
