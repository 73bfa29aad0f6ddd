"""`--resume` keeps a finished output only if it was made the same way (issue 37): every command that takes it
compares its options and its inputs' fingerprints with the finished output's record. One made the same way is kept
without work (its bytes and mtime unchanged); one made with other options or from other inputs is refused in one
`error:` line naming what differs, and nothing is changed; `--overwrite` redoes it."""

from __future__ import annotations

import contextlib
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run, tree, write_cifar100, write_stl10


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, real_store, test_store, tiny_sd, tiny_blip, cifar_small_archive) -> Path:
    """Stores, models and every import's source; the outputs are made by the tests, each once."""
    from synthkit.io.store import Store

    root = tmp_path_factory.mktemp("resume")
    (root / "data").mkdir()
    (root / "src").mkdir()
    shutil.copy(real_store, root / "data" / "real.h5")
    shutil.copy(test_store, root / "data" / "test.h5")
    shutil.copytree(tiny_sd, root / "models" / "tiny-sd")
    shutil.copytree(tiny_blip, root / "models" / "tiny-blip")
    for name in ("cifar10.tar.gz", "changing.tar.gz"):
        shutil.copy(cifar_small_archive, root / "src" / name)
    with Store(real_store) as s:
        images, labels = s.images(), s.labels
    write_cifar100(root / "src" / "c100", images, labels, [f"fine{i}" for i in range(100)])
    write_stl10(root / "src" / "stl", images.repeat(3, axis=1).repeat(3, axis=2), labels, [str(c) for c in s.classes])
    for layout in ("imagefolder", "webdataset"):
        result = run("export", root / "data" / "real.h5", "--format", layout, "--out", root / "src" / layout)
        assert result.exit_code == 0, result.output
    with contextlib.chdir(root):  # the embeddings DI samples (the invert cases find them made)
        result = run(*invert())
    assert result.exit_code == 0, result.output
    return root


def invert(*extra) -> list:
    return [
        "invert", "--class", "airplane,cat", "--data", "data/real.h5", "--model", "models/tiny-sd", "--updates", 1,
        "--resolution", 32, "--preview-every", 0, "--device", "cpu", "--out", "models/two.safetensors", *extra,
    ]  # fmt: skip


def prompts(*extra) -> list:
    return [
        "sample", "--prompt", "a {class}", "--classes", "airplane,cat", "--model", "models/tiny-sd", "--per-class", 1,
        "--steps", 2, "--device", "cpu", *extra,
    ]  # fmt: skip


def di(*extra) -> list:
    return [
        "sample", "--embeddings", "models/two.safetensors", "--model", "models/tiny-sd", "--per-image", 1,
        "--steps", 2, "--device", "cpu", *extra,
    ]  # fmt: skip


def train(data: str = "data/real.h5", *extra) -> list:
    return [
        "train", "--data", data, "--recipe", "quick", "--steps", 2, "--batch-size", 10, "--test", "data/test.h5",
        "--device", "cpu", "--out", "models/m.safetensors", *extra,
    ]  # fmt: skip


def mini(data: str = "data/real.h5", *extra) -> list:
    return [
        "model", "train", "--data", data, "--vae-steps", 1, "--steps", 1, "--vae-batch-size", 8, "--batch-size", 8,
        "--width", 32, "--vae-width", 16, "--preview-every", 0, "--device", "cpu", "--out", "models/mini", *extra,
    ]  # fmt: skip


def caption(data: str = "data/real.h5", *extra) -> list:
    return ["caption", "--data", data, "--model", "models/tiny-blip", "--device", "cpu", "--out", "c.h5", *extra]


def regzip(folder: Path) -> None:
    """The same archive's members in other bytes (another gzip level): a source whose content fingerprint changed."""
    path = folder / "src" / "changing.tar.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1))


def other_store(folder: Path) -> None:
    """data/real.h5 replaced by other images (the test store's), as when a stage upstream is redone."""
    shutil.copy(folder / "data" / "test.h5", folder / "data" / "other.h5")


# command: (how the output was made, the same command asked otherwise, what the error line says, a change of an
# input made before asking (None: none))
CASES = {
    "data cifar10, other options": (
        ["data", "cifar10", "--source", "src/cifar10.tar.gz", "--per-class", 5, "--out", "c10.h5"],
        ["data", "cifar10", "--source", "src/cifar10.tar.gz", "--per-class", 3, "--out", "c10.h5"],
        "c10.h5 was made with per_class 5, not 3: pass --overwrite to redo it",
        None,
    ),
    "data cifar10, the source changed": (
        ["data", "cifar10", "--source", "src/changing.tar.gz", "--per-class", 2, "--out", "c10b.h5"],
        ["data", "cifar10", "--source", "src/changing.tar.gz", "--per-class", 2, "--out", "c10b.h5"],
        "c10b.h5 was made with src/changing.tar.gz fingerprint",
        regzip,
    ),
    "data cifar100": (
        ["data", "cifar100", "--source", "src/c100", "--split", "train", "--out", "c100.h5"],
        ["data", "cifar100", "--source", "src/c100", "--split", "test", "--out", "c100.h5"],
        "c100.h5 was made with split train, not test",
        None,
    ),
    "data stl10": (
        ["data", "stl10", "--source", "src/stl", "--out", "stl.h5"],
        ["data", "stl10", "--source", "src/stl", "--seed", 3, "--out", "stl.h5"],
        "stl.h5 was made with seed 0, not 3",
        None,
    ),
    "data folder": (
        ["data", "folder", "--source", "src/imagefolder", "--out", "folder.h5"],
        ["data", "folder", "--source", "src/imagefolder", "--per-class", 2, "--out", "folder.h5"],
        "folder.h5 was made with per_class none, not 2",
        None,
    ),
    "data webdataset": (
        ["data", "webdataset", "--source", "src/webdataset", "--out", "shards.h5"],
        ["data", "webdataset", "--source", "src/webdataset", "--size", 16, "--out", "shards.h5"],
        "shards.h5 was made with size none, not 16",
        None,
    ),
    "caption, other options": (
        caption(),
        caption("data/real.h5", "--seed", 1),
        "c.h5 was made with seed 0, not 1",
        None,
    ),
    "caption, another store": (
        caption(),
        caption("data/other.h5"),
        "c.h5 was made with data/real.h5 (fingerprint",
        other_store,
    ),
    "sample, prompts": (
        prompts("--out", "sd.h5"),
        prompts("--out", "sd.h5", "--steps", 3),
        "sd.h5 was made with steps 2, not 3",
        None,
    ),
    "sample, img2img from another store": (
        prompts("--init", "data/real.h5", "--out", "i2i.h5"),
        prompts("--init", "data/other.h5", "--out", "i2i.h5"),
        "i2i.h5 was made with init data/real.h5, not data/other.h5; data/real.h5 (fingerprint",
        other_store,
    ),
    "sample, prompts --shard auto": (
        prompts("--out", "sd-auto.h5", "--shard", "auto"),
        prompts("--out", "sd-auto.h5", "--shard", "auto", "--seed", 1),
        "sd-auto.h5 was made with seed 0, not 1",
        None,
    ),
    "invert": (invert(), invert("--lr", 0.1), "models/two.safetensors was made with lr 0.03, not 0.1", None),
    "invert --shard auto": (
        invert("--shard", "auto"),
        invert("--shard", "auto", "--tokens", 2),
        "models/two.safetensors was made with tokens 5, not 2",
        None,
    ),
    "sample, DI": (
        di("--out", "inv.h5"),
        di("--out", "inv.h5", "--per-image", 2),
        "inv.h5 was made with per_image 1, not 2",
        None,
    ),
    "train, other options": (
        train(),
        train("data/real.h5", "--lr", 0.5),
        "models/m.safetensors was made with lr 0.025, not 0.5",
        None,
    ),
    "train, another store": (
        train(),
        train("data/other.h5"),
        "models/m.safetensors was made with data/real.h5 (fingerprint",
        other_store,
    ),
    "model train, other options": (
        mini(),
        mini("data/real.h5", "--seed", 1),
        "models/mini was made with seed 0, not 1",
        None,
    ),
    "model train, another store": (
        mini(),
        mini("data/other.h5"),
        "models/mini was made with data/real.h5 (fingerprint",
        other_store,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_keeps_only_an_output_made_the_same_way(case, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    made, other, expected, change = CASES[case]
    first = run(*made)  # once per output: the cases of one output share it
    assert first.exit_code in (0, 2), f"{case}: {first.output}"
    assert first.exit_code == 0 or "already exists" in first.stderr, f"{case}: {first.output}"
    before = tree(workspace)
    kept = run(*made, "--resume")
    assert kept.exit_code == 0 and "Traceback" not in kept.output, f"{case}: {kept.output}"
    assert tree(workspace) == before, f"{case}: --resume redid an output made the same way"
    if change is not None:
        change(workspace)
    before = tree(workspace)
    refused = run(*other, "--resume")
    message = refused.stderr.strip()
    assert refused.exit_code == 2 and message.startswith("error:") and len(message.splitlines()) == 1, (
        f"{case}: {refused.output}"
    )
    assert expected in message and "Traceback" not in refused.output, f"{case}: {message}"
    assert tree(workspace) == before, f"{case}: a refused --resume changed the files"


def test_every_command_that_takes_resume_is_in_the_table():
    """The table above covers every command with --resume (found from the CLI itself)."""
    import typer

    from synthkit.cli import app

    def commands(group, prefix: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group of subcommands (data, model)
                yield from commands(command, (*prefix, name))
            elif any(p.name == "resume" for p in command.params):
                yield " ".join((*prefix, name))

    covered = {
        " ".join(str(a) for a in made[: 2 if made[0] in ("data", "model") else 1]) for made, *_ in CASES.values()
    }
    assert set(commands(typer.main.get_command(app))) == covered


def test_overwrite_redoes_an_output_that_resume_refuses(workspace, monkeypatch):
    from synthkit.io.store import Store

    monkeypatch.chdir(workspace)
    args = ["data", "cifar10", "--source", "src/cifar10.tar.gz", "--out", "redo.h5"]
    assert run(*args, "--per-class", 5).exit_code == 0
    assert "redo.h5 was made with per_class 5, not 2" in run(*args, "--per-class", 2, "--resume").stderr
    result = run(*args, "--per-class", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    with Store(workspace / "redo.h5") as s:
        assert s.meta["params"]["per_class"] == 2 and np.array_equal(s.counts(), [2] * 10)
    assert run(*args, "--per-class", 2, "--resume").exit_code == 0


def test_resume_help_says_what_it_keeps():
    for command in (["data", "cifar10"], ["data", "folder"], ["sample"], ["invert"], ["train"], ["model", "train"]):
        text = " ".join(run(*command, "--help").output.replace("│", " ").split())
        assert "A finished output is kept only if it was made the same way" in text, command
        assert "--overwrite redoes the work" in text, command
