"""`python -m synthkit` runs the CLI."""

from .cli import main

main()
