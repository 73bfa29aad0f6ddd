"""safetensors files with provenance: tensors plus a JSON metadata record (no pickles anywhere)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

META_KEY = "synthkit"


def save_checkpoint(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write torch tensors and `meta` to `path` via a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata record alone, without reading any tensor (and without importing torch)."""
    meta, _ = _open_header(path)
    return meta


def tensor_shapes(path: str | Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor, read from the header."""
    _, header = _open_header(path)
    return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}


def load_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Load every tensor (onto `device`) and the metadata record."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    return load_file(str(path), device=str(device)), meta


def _open_header(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError
            header = json.loads(f.read(size))
        meta = json.loads(header.get("__metadata__", {})[META_KEY])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a synthkit safetensors file (no synthkit metadata)") from None
    return meta, header
