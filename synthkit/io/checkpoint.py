"""safetensors files with provenance: tensors plus a JSON metadata record (no pickles anywhere)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.outputs import written_whole

META_KEY = "synthkit"


def save_checkpoint(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write torch tensors and `meta` to `path` via a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with written_whole(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; stores get the umask's 0644, and so do these
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata record alone, without reading any tensor (and without importing torch)."""
    meta, _ = _open_header(path)
    return meta


def weights_fingerprint(path: str | Path) -> str:
    """sha256 over the tensors (names, dtypes, shapes and bytes), not the record: two files of the same weights share
    it, as two stores of the same images and labels share theirs (16 hex digits, as a store's)."""
    import hashlib

    _, header = _open_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    digest = hashlib.sha256(json.dumps(tensors, sort_keys=True).encode())
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def tensor_shapes(path: str | Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor, read from the header."""
    _, header = _open_header(path)
    return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}


def load_checkpoint(path: str | Path, device: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Load every tensor (onto `device`) and the metadata record; the header is checked first (see
    _open_header), and whatever the safetensors library still refuses becomes one clear line."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        return load_file(str(path), device=str(device)), meta
    except (OSError, ValueError, RuntimeError) as err:  # SafetensorError is an Exception subclass
        raise UserError(f"{path} cannot be loaded: {_first_line(err)}") from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise UserError(f"{path} is damaged: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# bytes per element of every dtype safetensors knows
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # the first bytes of every HDF5 file, so of every store


def _open_header(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata record and the header, after checking that the header describes the file: every tensor's
    shape times its dtype's size equals its byte span, and the spans tile the data exactly (no gap, no
    overlap, nothing past the end), so no load can allocate more than the file holds."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_dir():
        kind = "a diffusers model folder" if (path / "model_index.json").exists() else "a folder"
        raise UserError(f"{path} is {kind}, not a safetensors file: give a file written by synthkit")
    not_ours = f"{path} is not a synthkit safetensors file (no synthkit metadata)"
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
                raise UserError(
                    f"{path} is an image store (HDF5), not a safetensors file: give a classifier or embeddings"
                )
            f.seek(0)
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= min(100_000_000, file_size - 8):
                raise ValueError
            header = json.loads(f.read(size))
        meta = json.loads(header.get("__metadata__", {})[META_KEY])
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        raise UserError(not_ours) from None
    except OSError as err:
        raise UserError(f"{path} cannot be read: {err.strerror or err}") from None
    problem = _header_problem(header, file_size - 8 - size)
    if problem:
        raise UserError(f"{path} is damaged: {problem}")
    return meta, header


def _header_problem(header: dict[str, Any], data_size: int) -> str | None:
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            return f"tensor '{name}' has no description"
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            return f"tensor '{name}' has an unknown dtype {dtype!r}"
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            return f"tensor '{name}' has an invalid shape {shape!r}"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return f"tensor '{name}' has invalid data offsets {offsets!r}"
        count = 1
        for d in shape:
            count *= d
        declared = count * DTYPE_SIZES[dtype]
        if declared != offsets[1] - offsets[0]:
            return (
                f"tensor '{name}' declares {'x'.join(map(str, shape)) or 'a scalar'} {dtype} ({declared:,} bytes) "
                f"but spans {offsets[1] - offsets[0]:,} bytes"
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            return f"tensor '{name}' starts at byte {begin:,}, not {end:,} (a gap or an overlap)"
        end = stop
    if end != data_size:
        return f"its tensors span {end:,} bytes but the file holds {data_size:,} bytes of data"
    return None
