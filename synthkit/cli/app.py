"""The command line's top: the app and its help's look, how a command shows a UserError (one line, exit code 2),
and the notes and store lines that commands print."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..core.config import SEED_MAX
from ..core.errors import UserError

HELP = """Make synthetic training images useful: Diffusion Inversion and the study around it.

Pipeline: real images (data cifar10) -> invert (learn an embedding per real image) -> sample (new images from perturbed
embeddings, or from prompts) -> train (a classifier, ResNet-18 by default, on any mix of stores) -> evaluate (on the
real test set). gradcam and vanish analyse where models look and the geometry of the images.

Stores live in data/ (a bare name NAME means data/NAME.h5), models in models/, tables and figures in results/.
"""


class ClickStyleHelp:
    """typer 0.29 shows a flag's type as `<bool>` (so `--show true` looks valid, and fails) and a required argument
    as `{path}` in the usage line; synthkit's help shows them as click always has: a flag with no value, and an
    argument as PATH (optional ones in brackets, repeated ones with `...`)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Command(ClickStyleHelp, TyperCommand):
    """Every synthkit subcommand: its help in click's words (ClickStyleHelp)."""


class Group(ClickStyleHelp, TyperGroup):
    """Every command group below the top: its help in click's words (ClickStyleHelp)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


class ShortUsageErrors(Group):
    """Malformed options answered as click words them (usage, a hint, one `Error:` line), not in a rich panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except Exception as err:
            if not (hasattr(err, "show") and hasattr(err, "exit_code")):  # not a usage error: not ours to word
                raise
            if type(err).__name__ != "NoArgsIsHelpError":  # for that one the help is already printed
                err.show()
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=ShortUsageErrors, help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False
)


def _version(value: bool) -> None:
    if value:
        from ..core.version import __version__

        typer.echo(f"synthkit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print synthkit's version and exit."
    ),
) -> None:
    """Make synthetic training images useful: Diffusion Inversion and the study around it."""


err_console = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Show a UserError as one line on stderr and exit with code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_common(kwargs)
            return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def command(group: typer.Typer, name: str | None = None, **options: object) -> Callable:
    """Decorator: a subcommand of `group` whose UserErrors are one line and exit code 2 (user_errors)."""
    return lambda fn: group.command(name, cls=Command, **options)(user_errors(fn))


def check_common(options: dict) -> None:
    """Options many commands share, checked before the command starts: every seed within SEED_MAX, not both
    --resume (keep or continue) and --overwrite (start again), and not both --out and its old name --results."""
    if options.get("results") is not None and options.get("out") is not None:
        raise UserError(
            f"--out {options['out']} and --results {options['results']} both name the output folder (--results is "
            "the old name of --out): give --out alone"
        )
    seeds = options.get("seed")
    for seed in seeds if isinstance(seeds, list) else [seeds] if seeds is not None else []:
        if seed > SEED_MAX:
            raise UserError(f"--seed must be at most {SEED_MAX:,} (2**32 - 1), got {seed}")
    if options.get("resume") and options.get("overwrite"):
        raise UserError("--resume keeps or continues an output and --overwrite starts it again: pass one of them")


def note(message: str) -> None:
    """A one-line note on stderr of what will actually be done."""
    err_console.print(f"note: {message}", highlight=False, soft_wrap=True)


def print_store_line(path: Path) -> None:
    from ..io.store import Store

    with Store(path) as store:
        counts = store.counts()
        typer.echo(
            f"{path}: {len(store)} images, {counts.min()}-{counts.max()} per class, "
            f"{'x'.join(map(str, store.image_shape))}"
        )


def main() -> None:
    """Console-script entry point."""
    app()
