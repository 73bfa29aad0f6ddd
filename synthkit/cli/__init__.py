"""The synthkit command line: parses options and calls the library; nothing else lives here. One module per command
group, each registering its commands on `app` when imported, in the pipeline's order (the order of `synthkit --help`).

Heavy libraries (torch, diffusers, grad-cam) are imported inside the commands, so that
`synthkit --help` and argument errors answer at once.
"""

from .app import app, main

# isort: off
from . import files, data, generate, model, classify, analyse, report  # noqa: F401, E402
# isort: on

__all__ = ["app", "main"]
