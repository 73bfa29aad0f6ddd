"""Faults a user or a second process can cause: each ends with one `error:` line, exit code 2, no output
file left behind, and the inputs (and another writer's files) unchanged."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from synthkit import CIFAR10_CLASSES
from synthkit.core.errors import UserError
from synthkit.core.meta import provenance
from synthkit.core.paths import invert_state_dir, lock_path, partial_path, train_state_path
from synthkit.io.store import FORMAT, Store, StoreWriter

from conftest import make_image_folder, png_bytes, run

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(result, *expected: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1, message
    for text in expected:
        assert text in message, message
    return message


def empty_store(path: Path, classes=("a", "b")) -> Path:
    with StoreWriter(path, classes=list(classes), image_shape=(32, 32), meta=provenance("real", {})):
        pass
    return path


# ---------------------------------------------------------------- 1. two writers, one path


@pytest.fixture(scope="module")
def slow_archive(tmp_path_factory, cifar_small_archive) -> Path:
    """The committed test images, each repeated 150 times under new names (9,000 JPEGs): an import that takes a
    few seconds to read, so that a second process arrives while the first holds the output."""
    out = tmp_path_factory.mktemp("race") / "cifar-repeated.tar.gz"
    with tarfile.open(cifar_small_archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            if member.isfile() and member.name.split("/")[1] == "test":
                data = src.extractfile(member).read()
                stem, ext = member.name.rsplit(".", 1)
                for k in range(150):
                    info = tarfile.TarInfo(f"{stem}{k:03d}.{ext}")
                    info.size = len(data)
                    dst.addfile(info, io.BytesIO(data))
    return out


def test_two_real_imports_of_one_out_one_wins_the_other_is_refused(tmp_path, slow_archive):
    """Two `synthkit data cifar10` processes on one --out, the second started while the first writes."""
    out = tmp_path / "conc" / "same.h5"
    cmd = [
        sys.executable,
        "-m",
        "synthkit",
        "data",
        "cifar10",
        "--source",
        str(slow_archive),
        "--split",
        "test",
        "--out",
        str(out),
    ]
    env = dict(os.environ, SYNTHKIT_QUIET="1", SYNTHKIT_DEVICE="cpu")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock_path(out).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 2, (out2, err2)
    message = err2.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1, message
    assert f"being written by another synthkit process (pid {first.pid})" in message
    with Store(out) as store:
        assert len(store) == 9000 and list(store.counts()) == [900] * 10
    assert not partial_path(out).exists() and not lock_path(out).exists()


@pytest.fixture
def other_writer(tmp_path):
    """Hold the writer lock of an output as another process would (a separate open file), pid 4242."""
    held = []

    def hold(out: Path) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242")
        held.append(fd)
        partial_path(out).write_bytes(b"the other writer's half-written file")
        return out

    yield hold
    for fd in held:
        os.close(fd)


WRITERS = {
    "data": lambda out, ctx: ["data", "cifar10", "--source", ctx["archive"], "--split", "test", "--out", out],
    "data-overwrite": lambda out, ctx: ["data", "cifar10", "--source", ctx["archive"], "--out", out, "--overwrite"],
    "data-resume": lambda out, ctx: ["data", "cifar10", "--source", ctx["archive"], "--out", out, "--resume"],
    "sample": lambda out, ctx: [
        "sample",
        "--prompt",
        "a {class}",
        "--classes",
        "a,b",
        "--model",
        "no-such-model",
        "--out",
        out,
        "--overwrite",
    ],
    "sample-di": lambda out, ctx: ["sample", "--embeddings", "no-such.safetensors", "--out", out],
    "merge": lambda out, ctx: ["merge", ctx["store"], ctx["store"], "--out", out, "--overwrite"],
    "merge-embeddings": lambda out, ctx: ["merge", "a.safetensors", "b.safetensors", "--out", out],
    "train": lambda out, ctx: [
        "train",
        "--data",
        ctx["store"],
        "--out",
        out,
        "--recipe",
        "quick",
        "--steps",
        "1",
        "--device",
        "cpu",
    ],
    "invert": lambda out, ctx: [
        "invert",
        "--class",
        "all",
        "--data",
        ctx["store"],
        "--model",
        "no-such-model",
        "--out",
        out,
        "--overwrite",
    ],
    "model-tiny": lambda out, ctx: ["model", "tiny", "--out", out, "--overwrite"],
    "model-random": lambda out, ctx: ["model", "random", "--out", out, "--overwrite"],
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_a_second_writer_is_refused_before_it_touches_anything(command, tmp_path, other_writer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = empty_store(tmp_path / "in" / "small.h5")
    archive = make_image_folder(tmp_path / "src", per_class=1)
    suffix = {"train": ".safetensors", "invert": ".safetensors", "merge-embeddings": ".safetensors"}.get(
        command, "" if command.startswith("model") else ".h5"
    )
    out = other_writer(tmp_path / "out" / f"busy{suffix}")
    before = snapshot(tmp_path)
    result = run(*WRITERS[command](out, {"archive": archive, "store": store}))
    one_error_line(result, "being written by another synthkit process (pid 4242)", str(out))
    assert snapshot(tmp_path) == before  # nothing created, truncated or removed: not even the other's .partial
    assert not out.exists()


def test_an_interrupted_model_build_never_looks_like_a_model(tmp_path, monkeypatch):
    import diffusers

    from synthkit.generate import diffusion

    def dying(self, folder, *a, **k):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model_index.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "save_pretrained", dying)
    with pytest.raises(KeyboardInterrupt):
        diffusion.build_tiny_pipeline(tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists() and (tmp_path / "tiny.partial").exists()
    monkeypatch.undo()
    assert (diffusion.build_tiny_pipeline(tmp_path / "tiny") / "synthkit.json").exists()
    assert not (tmp_path / "tiny.partial").exists() and not lock_path(tmp_path / "tiny").exists()


def test_the_lock_is_released_and_removed_after_a_write_and_after_an_error(tmp_path):
    out = tmp_path / "s.h5"
    with StoreWriter(out, classes=["a"], image_shape=(8, 8), meta={}, total=1) as w:
        assert lock_path(out).exists()
        w.append(np.zeros((1, 8, 8, 3), np.uint8), [0])
    assert out.exists() and not lock_path(out).exists()
    with pytest.raises(UserError, match="already exists"):
        StoreWriter(out, classes=["a"], image_shape=(8, 8), meta={})  # exists, no --overwrite
    assert not lock_path(out).exists()
    with StoreWriter(out, classes=["a"], image_shape=(8, 8), meta={}, total=0, overwrite=True):
        pass
    assert not lock_path(out).exists()


def test_a_damaged_partial_never_gets_the_final_name(tmp_path):
    out = tmp_path / "s.h5"
    result = None
    try:
        with StoreWriter(out, classes=["a"], image_shape=(8, 8), meta={}, total=4) as w:
            w.append(np.zeros((4, 8, 8, 3), np.uint8), [0] * 4)
            w._file["labels"].resize(3, axis=0)  # what another writer's damage looks like: counts disagree
    except Exception as err:  # noqa: BLE001 - the type is checked below
        result = err
    assert type(result).__name__ == "UserError" and "keeps its .partial name" in str(result)
    assert not out.exists() and partial_path(out).exists()


# ---------------------------------------------------------------- 2. nothing in a file is trusted unchecked


def crafted_store(
    path: Path,
    *,
    n=4,
    labels_n=None,
    image_dtype=np.uint8,
    image_shape=(32, 32, 3),
    label_values=None,
    classes=("a", "b", "c"),
    column_rows=None,
    write=True,
) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = 1
        f.attrs["classes"] = json.dumps(list(classes)) if not isinstance(classes, str) else classes
        f.attrs["meta"] = json.dumps(provenance("real", {}))
        f.attrs["shard"] = ""
        images = f.create_dataset(
            "images",
            shape=(n, *image_shape),
            dtype=image_dtype,
            chunks=(min(max(n, 1), 64), *image_shape),
            maxshape=(None, *image_shape),
        )
        labels_n = n if labels_n is None else labels_n
        labels = f.create_dataset("labels", shape=(labels_n,), dtype=np.int64, chunks=(4096,), maxshape=(None,))
        if write:
            images[...] = 7
            labels[...] = np.arange(labels_n) % len(classes) if label_values is None else label_values
        group = f.create_group("columns")
        if column_rows is not None:
            group.create_dataset("idx", data=np.arange(column_rows))
    return path


CRAFTED = {
    "1e8 images in 8 KB": (dict(n=10**8, labels_n=10**8, write=False), "declares 100000000x32x32x3"),
    "labels != images": (dict(n=4, labels_n=3), "3 labels for 4 images"),
    "float images": (dict(image_dtype=np.float32), "not uint8"),
    "grey images": (dict(image_shape=(32, 32, 1)), "not uint8 (N, height, width, 3)"),
    "column rows": (dict(column_rows=2), "column 'idx' has 2 values for 4 images"),
    "label past the classes": (dict(label_values=[0, 1, 2, 9]), "label 9 is not one of its 3 classes"),
    "classes not a list": (dict(classes='"abc"'), "class list"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
@pytest.mark.parametrize("command", ["info", "show", "train"])
def test_a_crafted_store_is_refused_by_every_reader(case, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs, expected = CRAFTED[case]
    path = crafted_store(tmp_path / "crafted.h5", **kwargs)
    assert path.stat().st_size < 200_000  # the 10^8-image case is a few KB
    before = snapshot(tmp_path)
    args = {
        "info": ["info", path],
        "show": ["show", path, "--out", "grid.png"],
        "train": [
            "train",
            "--data",
            path,
            "--out",
            "m.safetensors",
            "--recipe",
            "quick",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
    }[command]
    started = time.perf_counter()
    one_error_line(run(*args), expected)
    assert time.perf_counter() - started < 30  # refused from the metadata, nothing large read or allocated
    assert snapshot(tmp_path) == before


def safetensors_bytes(header: dict, data: bytes, meta: dict | None = None) -> bytes:
    header = dict(
        header, __metadata__={"synthkit": json.dumps(meta or {"kind": "classifier", "arch": "resnet18-cifar"})}
    )
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


SAFETENSORS = {
    "1e6 x 1e6 tensor": (
        {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}},
        16,
        "declares 1000000x1000000 F32",
    ),
    "past the end": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8, "file holds 8 bytes"),
    "overlap": (
        {
            "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        },
        16,
        "gap or an overlap",
    ),
    "unknown dtype": ({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, 16, "unknown dtype"),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, 16, "invalid shape"),
}


@pytest.mark.parametrize("case", list(SAFETENSORS))
@pytest.mark.parametrize("command", ["info", "evaluate", "gradcam"])
def test_a_crafted_safetensors_header_is_refused(case, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header, size, expected = SAFETENSORS[case]
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes(header, bytes(size)))
    test = crafted_store(tmp_path / "test.h5")
    before = snapshot(tmp_path)
    args = {
        "info": ["info", model],
        "evaluate": ["evaluate", "--model", model, "--test", test, "--device", "cpu"],
        "gradcam": ["gradcam", "--model", model, "--data", test, "--out", "cams", "--device", "cpu"],
    }[command]
    one_error_line(run(*args), "is damaged", expected)
    assert snapshot(tmp_path) == before


def test_load_errors_of_the_safetensors_library_become_one_line(tmp_path, monkeypatch):
    import safetensors.torch

    from synthkit.io.checkpoint import load_checkpoint

    class SafetensorError(Exception):
        pass

    def broken(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: something the checks did not foresee")

    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    monkeypatch.setattr(safetensors.torch, "load_file", broken)
    with pytest.raises(Exception) as caught:
        load_checkpoint(path)
    assert type(caught.value).__name__ == "UserError" and "deserializing header" in str(caught.value)


# ---------------------------------------------------------------- 3. every error is one line


@pytest.mark.parametrize("command", ["evaluate", "gradcam", "info-classifier"])
def test_a_diffusers_folder_given_as_a_classifier(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "models" / "tiny-sd"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    test = crafted_store(tmp_path / "test.h5")
    before = snapshot(tmp_path)
    if command == "info-classifier":
        from synthkit.classify.model import classifier_meta
        from synthkit.core.errors import UserError

        with pytest.raises(UserError, match="diffusers model folder"):
            classifier_meta(folder)
        return
    args = {
        "evaluate": ["evaluate", "--model", folder, "--test", test, "--device", "cpu"],
        "gradcam": ["gradcam", "--model", folder, "--data", test, "--out", "cams", "--device", "cpu"],
    }[command]
    one_error_line(run(*args), "is a diffusers model folder, not a safetensors file")
    assert snapshot(tmp_path) == before


def test_show_refuses_an_empty_store(tmp_path):
    store = empty_store(tmp_path / "empty.h5")
    one_error_line(run("show", store, "--out", tmp_path / "grid.png"), "has no images")
    assert not (tmp_path / "grid.png").exists()


def test_invert_on_an_empty_store_says_it_has_no_images_not_a_shard(tmp_path):
    store = empty_store(tmp_path / "empty.h5")
    out = tmp_path / "inv.safetensors"
    message = one_error_line(
        run("invert", "--class", "all", "--data", store, "--model", "no-such-model", "--out", out), "has no images"
    )
    assert "shard" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.h5"]


@pytest.mark.parametrize("data", ["real,", ",real", "real,,inv", " , "])
def test_empty_store_names_are_refused(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error_line(
        run("train", "--data", data, "--out", "m.safetensors", "--recipe", "quick", "--steps", "1"), "empty store name"
    )
    one_error_line(run("vanish", "--data", data, "--out", "v"), "empty store name")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("bad", ["../train/cat/9.png", "/tmp/train/cat/9.png", "cifar10/../../train/dog/9.png"])
def test_an_archive_with_members_outside_it_is_refused_by_name(kind, bad, tmp_path):
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    archive = tmp_path / f"src.{'zip' if kind == 'zip' else 'tar'}"
    names = [f"cifar10/train/{c}/0.png" for c in CIFAR10_CLASSES] + [bad]
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for name in names:
                z.writestr(zipfile.ZipInfo(name), image)
    else:
        import io

        with tarfile.open(archive, "w") as t:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = len(image)
                t.addfile(info, io.BytesIO(image))
    before = snapshot(tmp_path)
    out = tmp_path / "out.h5"
    one_error_line(run("data", "cifar10", "--source", archive, "--out", out), f"member '{bad}'", "outside the archive")
    assert snapshot(tmp_path) == before and not out.exists()


# ---------------------------------------------------------------- 4. a leftover is never silently discarded


def test_data_with_a_leftover_partial_needs_resume_or_overwrite(tmp_path):
    source = make_image_folder(tmp_path / "src", per_class=1)
    out = tmp_path / "real.h5"
    partial_path(out).write_bytes(b"an interrupted import")
    before = snapshot(tmp_path)
    one_error_line(
        run("data", "cifar10", "--source", source, "--out", out),
        "interrupted run",
        str(partial_path(out)),
        "--resume",
        "--overwrite",
    )
    assert snapshot(tmp_path) == before and not out.exists()
    result = run("data", "cifar10", "--source", source, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    with Store(out) as s:
        assert len(s) == 10
    assert not partial_path(out).exists()


def test_train_with_a_leftover_state_needs_resume_or_overwrite(tmp_path):
    store = crafted_store(tmp_path / "real.h5")
    out = tmp_path / "m.safetensors"
    train_state_path(out).write_bytes(b"an interrupted training")
    before = snapshot(tmp_path)
    one_error_line(
        run("train", "--data", store, "--out", out, "--steps", "1", "--device", "cpu"),
        "interrupted run",
        str(train_state_path(out)),
        "--resume",
        "--overwrite",
    )
    assert snapshot(tmp_path) == before and not out.exists()


def test_invert_with_a_leftover_state_needs_resume_or_overwrite(tmp_path):

    store = crafted_store(tmp_path / "real.h5")
    out = tmp_path / "inv.safetensors"
    invert_state_dir(out).mkdir()
    (invert_state_dir(out) / "chunk-00000.safetensors").write_bytes(b"a finished chunk")
    before = snapshot(tmp_path)
    one_error_line(
        run("invert", "--class", "all", "--data", store, "--model", "no-such-model", "--out", out),
        "interrupted run",
        "--resume",
        "--overwrite",
    )
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("mode", ["prompts", "embeddings"])
def test_sample_with_a_leftover_partial_needs_resume_or_overwrite(mode, tmp_path):
    out = tmp_path / "sd.h5"
    partial_path(out).write_bytes(b"an interrupted sampling")
    before = snapshot(tmp_path)
    args = (
        ["--prompt", "a {class}", "--classes", "a,b", "--model", "no-such-model"]
        if mode == "prompts"
        else ["--embeddings", "no-such.safetensors"]
    )
    one_error_line(run("sample", *args, "--out", out), "interrupted run", "--resume", "--overwrite")
    assert snapshot(tmp_path) == before and not out.exists()


def test_info_on_a_missing_store_names_its_partial(tmp_path):
    out = tmp_path / "real.h5"
    partial_path(out).write_bytes(b"an interrupted import")
    one_error_line(run("info", out), "does not exist", str(partial_path(out)), "--resume", "--overwrite")


def test_reading_a_partial_that_a_writer_holds_says_so(tmp_path, other_writer):
    out = other_writer(tmp_path / "busy.h5")
    for args in (
        ["info", partial_path(out)],
        ["info", out],
        ["show", partial_path(out), "--out", tmp_path / "g.png"],
        ["show", out, "--out", tmp_path / "g.png"],
    ):
        message = one_error_line(run(*args), "being written by another synthkit process (pid 4242)")
        assert "not an HDF5 file" not in message
    assert partial_path(out).read_bytes() == b"the other writer's half-written file"
