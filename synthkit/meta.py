"""Provenance: the metadata every store and safetensors file carries about how it was made."""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
from typing import Any

from . import __version__


def command_line() -> str:
    """The command line of this process, quoted so it can be pasted back into a shell."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("synthkit", "__main__.py", "cli.py")):
        argv[0] = "synthkit"
    return shlex.join(argv)


def provenance(kind: str, params: dict[str, Any], sources: list[Any] | None = None) -> dict[str, Any]:
    """Build the standard metadata record: kind, command, parameters, version, time, sources."""
    return {
        "kind": kind,
        "command": command_line(),
        "params": jsonable(params),
        "synthkit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": jsonable(sources or []),
    }


def model_note(model: str) -> dict[str, Any]:
    """What synthkit wrote about a model folder it built (synthkit.json, e.g. the tiny random pipeline), or {}."""
    from pathlib import Path

    path = Path(str(model)) / "synthkit.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def jsonable(value: Any) -> Any:
    """Turn paths, tuples and numpy scalars into plain JSON values (round-trips through json)."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)
