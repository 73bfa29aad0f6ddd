"""Shared fixtures: small real inputs built from the committed tests/data fixture, and a CLI runner.

A few named tests read ../shared/data (or $SYNTHKIT_SHARED/data) directly: the full CIFAR-10 archive and the York
Urban scenes, which may not be redistributed. They skip without it, and only they may: with SYNTHKIT_NO_SKIPS=1
(set by .ci/run) any other skip, or a skip for another reason, fails the run.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthkit import CIFAR10_CLASSES
from synthkit.core.config import MiniConfig

os.environ["SYNTHKIT_QUIET"] = "1"  # progress bars would interleave with the messages the tests read
# SYNTHKIT_THREADS=1 pytest runs the suite on one torch thread (every job's configure_threads honours it too): a
# test whose assertion depends on the thread count, and so on the machine's floating point, fails one of the two runs.
if os.environ.get("SYNTHKIT_THREADS"):
    import torch

    torch.set_num_threads(int(os.environ["SYNTHKIT_THREADS"]))
SHARED = Path(os.environ.get("SYNTHKIT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
SHARED_ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
MINI_ARCHIVE = Path(__file__).resolve().parent / "data" / "cifar10-mini.tar.gz"  # see tests/data/README.md
# The tests allowed to skip, each only for its reason; under SYNTHKIT_NO_SKIPS=1 any other skip fails the run.
ALLOWED_SKIPS = {
    "test_datasets.py::test_shared_archive_test_split_and_seeded_subset": "shared CIFAR-10 archive not found",
    "test_yud.py::": "York Urban training half not found",
}
_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    allowed = any(
        (test.endswith("::") and f"{test}" in report.nodeid or report.nodeid.endswith(test)) and reason.startswith(why)
        for test, why in ALLOWED_SKIPS.items()
    )
    if not allowed:
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def _no_skips() -> bool:
    return os.environ.get("SYNTHKIT_NO_SKIPS") == "1"


def pytest_sessionfinish(session, exitstatus):
    if _no_skips() and _unexpected_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _no_skips() and _unexpected_skips:
        terminalreporter.section("unexpected skips (SYNTHKIT_NO_SKIPS=1)", red=True)
        for line in _unexpected_skips:
            terminalreporter.line(line, red=True)
        terminalreporter.line(
            f"FAILED: {len(_unexpected_skips)} test(s) skipped; only {', '.join(ALLOWED_SKIPS)} may skip "
            "(without ../shared)",
            red=True,
            bold=True,
        )


def run(*args: str):
    """Run the synthkit CLI in-process; returns Typer's Result (exit_code, stdout, stderr)."""
    from synthkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED_ARCHIVE}")
    return SHARED_ARCHIVE


@pytest.fixture(scope="session")
def cifar_small_archive() -> Path:
    """The committed .tar.gz in the shared layout: the first 12 train and 6 test JPEGs of every class."""
    assert MINI_ARCHIVE.exists(), f"{MINI_ARCHIVE} is missing: see tests/data/README.md"
    return MINI_ARCHIVE


@pytest.fixture(scope="session")
def real_store(tmp_path_factory, cifar_small_archive) -> Path:
    """A store of 12 real CIFAR-10 training images per class."""
    from synthkit.io.datasets import import_cifar10

    return import_cifar10(tmp_path_factory.mktemp("stores") / "real.h5", source=cifar_small_archive, split="train")


@pytest.fixture(scope="session")
def test_store(tmp_path_factory, cifar_small_archive) -> Path:
    """A store of 6 real CIFAR-10 test images per class."""
    from synthkit.io.datasets import import_cifar10

    return import_cifar10(tmp_path_factory.mktemp("stores") / "test.h5", source=cifar_small_archive, split="test")


def make_image_folder(root: Path, split: str = "train", per_class: int = 3, classes=CIFAR10_CLASSES, fmt="PNG") -> Path:
    """Write random 32x32 images as root/cifar10/<split>/<class>/<i>.<fmt>; returns root/cifar10."""
    rng = np.random.default_rng(0)
    for cls in classes:
        folder = root / "cifar10" / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.{fmt.lower()}", fmt)
    return root / "cifar10"


def tar_folder(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz" if out.name.endswith("gz") else "w") as tar:
        tar.add(folder, arcname=folder.name)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, real_store) -> Path:
    """A ResNet-18 trained for a handful of steps on the small real store."""
    from synthkit.classify.training import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "resnet18-real.safetensors"
    train(
        [real_store],
        out,
        TrainConfig.from_recipe("quick", steps=6, batch_size=40, lr=0.05, warmup_steps=1),
        device="cpu",
    )
    return out


def copy_store_as(src: Path, out: Path, kind: str, classes=None) -> Path:
    """A copy of a store relabelled with another kind (and optionally other class names)."""
    from synthkit.core.meta import provenance
    from synthkit.io.store import Store, StoreWriter

    with (
        Store(src) as s,
        StoreWriter(
            out,
            classes=classes or s.classes,
            image_shape=s.image_shape[:2],
            meta=provenance(kind, {"from": str(src)}),
            total=len(s),
        ) as w,
    ):
        w.append(s.images(), s.labels)
    return out


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """The tiny random-weight Stable Diffusion pipeline, built offline through the CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-sd"
    result = run("model", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def small_real(tmp_path_factory, real_store) -> Path:
    """4 real images of each class (a seeded subset of real_store): enough for inversion tests."""
    from synthkit.core.meta import provenance
    from synthkit.io.store import Store, StoreWriter, balanced_subset

    out = tmp_path_factory.mktemp("stores") / "real4.h5"
    with Store(real_store) as s:
        idx = balanced_subset(s.labels, 4, seed=0)
        with StoreWriter(
            out, classes=s.classes, image_shape=(32, 32), meta=provenance("real", {"per_class": 4}), total=len(idx)
        ) as w:
            w.append(s.images(idx), s.labels[idx])
    return out


def cut_store(src: Path, out: Path, size: int, classes=("airplane", "cat", "ship"), kind: str = "real") -> Path:
    """A store of some of src's classes, resized to size x size: a stand-in for a user's own data set."""
    import torch

    from synthkit.classify.model import resize_images
    from synthkit.core.meta import provenance
    from synthkit.io.store import Store, StoreWriter

    with Store(src) as s:
        rows = np.flatnonzero(np.isin(np.array(s.classes)[s.labels], classes))
        pixels = resize_images(torch.from_numpy(s.images(rows)).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()
        labels = [list(classes).index(s.classes[c]) for c in s.labels[rows]]
    with StoreWriter(
        out, classes=list(classes), image_shape=(size, size), meta=provenance(kind, {"from": str(src)}), total=len(rows)
    ) as w:
        w.append(pixels, labels)
    return out


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    """The tiny random-weight BLIP captioner, built offline through the CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-blip"
    result = run("model", "tiny-blip", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def usage_error(result, option: str, *expected: str) -> str:
    """An option's value that is none of its choices: click's short usage message, exit 2, the last line
    `Error: Invalid value for '<option>'` naming the choices."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 4 and lines[0].startswith("Usage: "), result.output
    assert lines[-1].startswith(f"Error: Invalid value for '{option}'") and all(e in lines[-1] for e in expected), (
        lines[-1]
    )
    return lines[-1]


# ---- helpers that tests in several folders share


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` (folders, links and files) and what it holds."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "link -> " + os.readlink(p)
        elif p.is_dir():
            out[key] = "folder"
        else:
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mtime_ns}"
    return out


def write_cifar100(root, images, labels, names):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        batch = {
            b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            b"fine_labels": list(map(int, labels)),
            b"coarse_labels": [0] * len(labels),
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [n.encode() for n in names]}, protocol=2))
    return folder


def write_stl10(root, images96, labels, names):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(images96.transpose(0, 3, 2, 1).tobytes())  # column-major, as STL-10
        (folder / f"{split}_y.bin").write_bytes((np.asarray(labels) + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return folder


SMALL = MiniConfig(
    vae_steps=3, vae_batch_size=8, steps=4, batch_size=8, warmup_steps=1, unet_channels=(32, 32, 32),
    vae_channels=(16, 16, 16), text_hidden=32, preview_every=0, checkpoint_every=0,
)  # fmt: skip
