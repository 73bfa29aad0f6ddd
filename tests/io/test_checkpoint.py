import pytest
import torch

from synthkit.core.errors import UserError
from synthkit.core.meta import provenance
from synthkit.io.checkpoint import load_checkpoint, read_meta, save_checkpoint, tensor_shapes


def test_round_trip_tensors_and_metadata(tmp_path):
    tensors = {"w": torch.randn(3, 4), "i": torch.arange(5)}
    meta = provenance("classifier", {"lr": 0.1, "classes": ("a", "b")}, [{"path": "data/real.h5"}])
    path = save_checkpoint(tmp_path / "m.safetensors", tensors, meta)
    loaded, meta2 = load_checkpoint(path)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["i"], tensors["i"])
    assert meta2 == meta and meta2["params"]["classes"] == ["a", "b"]
    assert read_meta(path) == meta
    assert tensor_shapes(path)["w"] == ([3, 4], "F32")
    assert not (tmp_path / "m.safetensors.partial").exists()


def test_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "text.safetensors").write_text("not a safetensors file at all")
    for name in ("plain.safetensors", "text.safetensors"):
        with pytest.raises(UserError, match="not a synthkit safetensors"):
            read_meta(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_read_meta_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    meta = provenance("embeddings", {"lr": 0.03}, [{"path": "data/real.h5"}])
    path = save_checkpoint(tmp_path / "e.safetensors", {"emb": torch.zeros(2, 5, 8)}, meta)
    code = (
        "import json, sys\n"
        "from synthkit.io.checkpoint import read_meta\n"
        f"meta = read_meta({str(path)!r})\n"
        "print(json.dumps({'meta': meta, 'torch': 'torch' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    result = json.loads(out)
    assert result["meta"] == meta and result["torch"] is False, "read_meta imported torch"
