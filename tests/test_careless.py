"""Careless use (issue 27): absurd counts, seeds past their bound, contradictory flags and values that would be ignored
are one `error:` line (exit 2, no traceback, no file created, changed or removed) or a one-line note of what is done;
and the Makefile's dry runs change no file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run, tree

ROOT = Path(__file__).resolve().parent.parent
HUGE = 10**12


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, real_store, test_store, tiny_classifier, tiny_sd) -> Path:
    root = tmp_path_factory.mktemp("careless")
    shutil.copy(real_store, root / "real.h5")
    shutil.copy(test_store, root / "test.h5")
    shutil.copy(tiny_classifier, root / "clf.safetensors")
    shutil.copytree(tiny_sd, root / "tiny-sd")
    (root / "sub").mkdir()
    shutil.copy(real_store, root / "sub" / "real.h5")
    shutil.copy(tiny_classifier, root / "sub" / "clf.safetensors")
    shutil.copy(tiny_classifier, root / "clf-copy.safetensors")
    return root


def train(*extra) -> list:
    return ["train", "--data", "real.h5", "--out", "m.safetensors", "--recipe", "quick", "--device", "cpu", *extra]


def sample(*extra) -> list:
    return ["sample", "--prompt", "a {class}", "--model", "tiny-sd", "--per-class", 1, "--device", "cpu", *extra]


# class: {case: (arguments, what the error line says)}
REFUSED = {
    "count past what it implies": {
        "train --steps": (train("--steps", HUGE), "--steps must be at most"),
        "train --steps and --evals": (train("--steps", HUGE, "--evals", HUGE, "--test", "test.h5"), "--steps must be"),
        "sample --steps": (sample("--steps", HUGE, "--out", "s.h5"), "--steps must be at most 1000"),
        "sample --per-class": (sample("--per-class", HUGE, "--out", "s.h5"), "would write 10,000,000,000,000 images"),
        "subset --per-class": (["subset", "real.h5", "--per-class", HUGE, "--out", "x.h5"], "class airplane has only"),
    },
    "seed past 2**32 - 1": {
        "train": (train("--steps", 1, "--seed", 2**32), "--seed must be at most 4,294,967,295"),
        "train, a second seed": (train("--steps", 1, "--seed", 0, "--seed", 2**64), "--seed must be at most"),
        "caption": (["caption", "--data", "real.h5", "--out", "c.h5", "--seed", 2**64], "--seed must be at most"),
        "sample": (sample("--seed", 2**63, "--out", "s.h5"), "--seed must be at most"),
        "subset": (["subset", "real.h5", "--per-class", 1, "--seed", 2**32, "--out", "x.h5"], "--seed must be"),
        "show": (["show", "real.h5", "--out", "g.png", "--seed", 2**32], "--seed must be at most"),
        "gradcam": (
            ["gradcam", "--model", "clf.safetensors", "--data", "test.h5", "--seed", 2**32, "--out", "g"],
            "--seed must be",
        ),
    },
    "outputs or side files that would collide": {
        "train, two stores of one name": (
            ["train", "--data", "real.h5", "--data", "sub/real.h5", "--out", "m-{data}-{seed}.safetensors"],
            "stores real.h5 and sub/real.h5 have the same names",
        ),
        "evaluate, one file name in two folders": (
            ["evaluate", "--model", "clf.safetensors", "--model", "sub/clf.safetensors", "--test", "test.h5"],
            "have one file name",
        ),
        "evaluate, two copies of one classifier": (
            ["evaluate", "--model", "clf.safetensors", "--model", "clf-copy.safetensors", "--test", "test.h5"],
            "is a copy of clf.safetensors",
        ),
    },
    "--resume keeps only an output made the same way": {
        "caption, an output without captions": (
            ["caption", "--data", "real.h5", "--model", "no-blip", "--out", "test.h5", "--resume"],
            "test.h5 was made with model (not recorded), not no-blip",
        ),
    },
    "a warm-up the run never finishes": {
        "train": (train("--steps", 2, "--warmup-steps", 9), "--warmup-steps 9 is not shorter than --steps 2"),
    },
    "--resume with --overwrite": {
        "train": (train("--steps", 1, "--resume", "--overwrite"), "pass one of them"),
        "sample": (sample("--out", "s.h5", "--resume", "--overwrite"), "pass one of them"),
        "caption": (["caption", "--data", "real.h5", "--out", "c.h5", "--resume", "--overwrite"], "pass one of them"),
        "subset (no --resume)": (["subset", "real.h5", "--out", "real.h5", "--overwrite"], "is the input"),
    },
}


@pytest.mark.parametrize("klass, case", [(k, c) for k, cases in REFUSED.items() for c in cases])
def test_careless_input_is_one_error_line_and_writes_nothing(klass, case, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    args, expected = REFUSED[klass][case]
    before = tree(workspace)
    result = run(*args)
    message = result.stderr.strip()
    assert result.exit_code == 2 and message.startswith("error:") and len(message.splitlines()) == 1, (
        f"{klass} / {case}: {result.output}"
    )
    assert expected in message and "Traceback" not in result.output, f"{klass} / {case}: {message}"
    assert tree(workspace) == before, f"{klass} / {case} changed the files"


def test_seed_bound_is_in_help():
    for command in (["train"], ["sample"], ["caption"], ["invert"], ["model", "train"]):
        assert "4,294,967,295" in " ".join(run(*command, "--help").output.split()), command


# Valid but odd: the job runs, and a one-line note says what is actually done.
NOTED = {
    "evals past steps": (train("--steps", 2, "--evals", 5, "--test", "test.h5"), "scoring after each step"),
    "evals without a test store": (train("--steps", 1, "--evals", 3), "--evals 3 is not used: no --test"),
    "step-every on warmup-cosine": (train("--steps", 1, "--step-every", 5), "--step-every is not used"),
    "real-batch on a real row": (train("--steps", 1, "--real-batch", 3), "--real-batch 3 is not used for real"),
    "empty shard": (train("--steps", 1, "--shard", "1/4"), "shard 1/4 has no classifiers to train"),
}


@pytest.mark.parametrize("case", list(NOTED))
def test_odd_but_valid_input_runs_with_a_note(case, workspace, monkeypatch):
    from synthkit.io.checkpoint import read_meta

    monkeypatch.chdir(workspace)
    args, expected = NOTED[case]
    out = workspace / "m.safetensors"
    out.unlink(missing_ok=True)
    result = run(*args, "--batch-size", 8)
    assert result.exit_code == 0 and "Traceback" not in result.output, f"{case}: {result.output}"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert any(expected in line for line in notes), f"{case}: {result.stderr}"
    if case == "empty shard":
        assert not out.exists() and "trained classifiers" not in result.output
        return
    meta = read_meta(out)
    if case == "evals past steps":
        assert meta["params"]["evals"] == 2 and len(meta["evals"]) == 2  # what was applied is what is recorded
    if case == "real-batch on a real row":
        assert meta["params"]["real_batch"] is None


# ---- the Makefile: dry runs change no file, and do not make a finished stage run again

STUB = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/stub.log"
while [ $# -gt 0 ]; do if [ "$1" = --out ]; then mkdir -p "$(dirname "$2")"; touch "$2"; fi; shift; done
"""


@pytest.fixture
def clone(tmp_path) -> Path:
    """A copy of the repository's files with a stub synthkit that logs its calls and touches its --out."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    copy = tmp_path / "clone"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "data", "models", "results", ".make", "demo", "mini-study", ".cache"
        ),
    )
    stub = copy / "stub" / "synthkit"
    stub.parent.mkdir()
    stub.write_text(STUB)
    stub.chmod(0o755)
    return copy


def make(clone: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", f"SK={clone / 'stub' / 'synthkit'}", "CIFAR=none", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


DRY_RUNS = [
    ["-n", "reproduce", "PER_CLASS=7", "RECIPE=quick", "SEEDS=3 4", "SEED=5", "MODEL=models/tiny-sd"],
    ["-n", "sweep", "SIZES=2 3", "SWEEP_SEEDS=1", "TRAIN_STEPS=9"],
    ["-n", "demo", "PER_CLASS=3", "SEEDS=7"],
    ["-n", "mini-study", "PER_CLASS=3", "MODEL=x"],
    ["-n", "mini-sweep", "SIZES=2 3"],
    ["help", "PER_CLASS=9"],
]


def test_dry_runs_change_no_file_and_a_finished_stage_is_kept(clone):
    first = make(clone, "data/real.h5")
    assert first.returncode == 0, first.stderr
    calls = (clone / "stub" / "stub.log").read_text()
    assert "data cifar10" in calls and (clone / ".make" / "data").exists()
    before = tree(clone)
    for args in DRY_RUNS:
        result = make(clone, *args)
        assert result.returncode == 0, f"{args}: {result.stderr}"
    assert tree(clone) == before
    again = make(clone, "data/real.h5")
    assert again.returncode == 0 and (clone / "stub" / "stub.log").read_text() == calls, again.stdout
    assert tree(clone) == before


def test_demo_names_the_variables_it_replaces(clone):
    result = make(clone, "-n", "demo", "PER_CLASS=3", "SEEDS=7")
    line = next(line for line in result.stdout.splitlines() if "demo: its own values replace yours of" in line)
    assert line.split(" of ")[1].strip('"').split() == ["CIFAR", "PER_CLASS", "SEEDS"], line  # CIFAR: make() sets it


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("SIZES=5 5", "SIZES=5 5 repeats a value"),
        ("SIZES=", "SIZES is empty"),
        ("SEEDS=0 -1", "'-1' is not a non-negative integer"),
        ("SWEEP_SEEDS=a", "SWEEP_SEEDS=a: 'a' is not"),
        ("RECIPE=fast", "RECIPE=fast is not a recipe"),
        ("SHARDS=0", "SHARDS=0 must be at least 1"),
        ("PER_CLASS=ten", "PER_CLASS=ten is not a non-negative integer"),
        ("EVALS=-2", "EVALS=-2 is not"),
    ],
)
def test_makefile_variables_are_checked_before_any_stage(clone, setting, expected):
    result = make(clone, "reproduce", setting)
    assert result.returncode != 0 and expected in result.stderr and result.stdout == "", result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (clone / "stub" / "stub.log").exists()
    assert not (clone / ".make").exists()


@pytest.mark.parametrize(
    "demo_dir, expected",
    [
        ("..", "a folder above the project"),
        ("/", "DEMO_DIR=/ is /, a folder above the project"),
        (".", "is the project folder"),
        ("a link to the project", "is the project folder"),
        ("stub/..", "is the project folder"),
        ("", "DEMO_DIR is empty"),
    ],
)
def test_demo_dir_is_never_the_project_or_a_folder_above_it(clone, tmp_path, demo_dir, expected):
    """The demo writes data/, models/ and results/ in DEMO_DIR: the project's own folder, or one above it (the parent,
    the root), is refused in one line before any stage, by a dry run too."""
    if demo_dir == "a link to the project":
        demo_dir = str(tmp_path / "link")
        (tmp_path / "link").symlink_to(clone)
    before = tree(clone)
    for dry in ([], ["-n"]):
        result = make(clone, *dry, "demo", f"DEMO_DIR={demo_dir}")
        assert result.returncode != 0 and expected in result.stderr and result.stdout == "", result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (clone / "stub" / "stub.log").exists()
    assert tree(clone) == before


# ---- sample --only: every recorded row and path of a subset is checked


@pytest.fixture(scope="module")
def inverted(tmp_path_factory, small_real, tiny_sd) -> Path:
    """data/two.h5 (two classes) inverted into two.safetensors, and data/pair.h5 cut from it from the root folder."""
    from synthkit.core.config import InversionConfig
    from synthkit.generate.inversion import invert

    from conftest import cut_store

    root = tmp_path_factory.mktemp("only")
    (root / "data").mkdir()
    two = cut_store(small_real, root / "data" / "two.h5", 32, classes=("airplane", "cat"))
    invert(two, root / "two.safetensors", "all", str(tiny_sd), InversionConfig(updates=1, resolution=64, group_size=4))
    shutil.copytree(tiny_sd, root / "tiny-sd")
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert run("subset", "data/two.h5", "--per-class", 2, "--out", "data/pair.h5").exit_code == 0
    finally:
        os.chdir(cwd)
    (root / "elsewhere").mkdir()
    return root


def tampered(root: Path, rows: list[int]) -> Path:
    import h5py

    out = root / "data" / f"pair{'_'.join(map(str, rows))}.h5"
    shutil.copy(root / "data" / "pair.h5", out)
    with h5py.File(out, "r+") as f:
        f["columns"]["parent_row"][...] = rows
    return out


ONLY = {
    "a parent row beyond the store": ([0, 1, 4, 99], "records parent row 99"),
    "a negative parent row": ([-1, 1, 4, 5], "records parent row -1"),
    "rows of another class": ([4, 5, 0, 1], "hold other classes"),
}


@pytest.mark.parametrize("case", list(ONLY))
def test_only_refuses_recorded_rows_that_do_not_apply(case, inverted, monkeypatch):
    rows, expected = ONLY[case]
    subset = tampered(inverted, rows)
    monkeypatch.chdir(inverted)
    before = tree(inverted)
    result = run("sample", "--embeddings", "two.safetensors", "--only", subset, "--model", "tiny-sd", "--out", "s.h5")
    message = result.stderr.strip()
    assert result.exit_code == 2 and message.startswith("error:") and len(message.splitlines()) == 1, result.output
    assert expected in message and "Traceback" not in result.output, message
    assert tree(inverted) == before


def test_only_in_prompt_mode_is_refused(inverted, monkeypatch):
    monkeypatch.chdir(inverted)
    before = tree(inverted)
    result = run("sample", *["--prompt", "a {class}", "--only", "data/pair.h5", "--model", "tiny-sd", "--out", "s.h5"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --only picks the embeddings"), result.output
    assert tree(inverted) == before


def test_a_di_count_past_the_disk_is_refused_before_it_is_built(inverted, monkeypatch):
    """--per-image is checked against the store it implies (it built a partner table of its size, 9.5 GB for 10**9
    prompts per class before this check)."""
    monkeypatch.chdir(inverted)
    before = tree(inverted)
    args = ["--embeddings", "two.safetensors", "--per-image", HUGE, "--model", "tiny-sd", "--out", "s.h5"]
    result = run("sample", *args)
    assert result.exit_code == 2 and "would write" in result.stderr and "--per-image" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and tree(inverted) == before


def test_only_finds_a_subsets_parent_from_another_folder(inverted, monkeypatch):
    from synthkit.generate.sampling import inverted_rows
    from synthkit.io.store import Store

    monkeypatch.chdir(inverted / "elsewhere")
    with Store(Path("../data/two.h5")) as two, Store(Path("../data/pair.h5")) as pair:
        rows = inverted_rows(Path("../data/pair.h5"), two.fingerprint)
        assert rows is not None and list(rows) == list(pair.column("parent_row"))


def test_side_files_are_named_from_the_whole_output_name(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    result = run(
        "train", "--data", "real.h5", "--recipe", "quick", "--device", "cpu", "--steps", 1, "--batch-size", 8,
        "--out", "side/m.{seed}", "--seed", 0, "--seed", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    logs = sorted(p.name for p in (workspace / "side").glob("*.log.jsonl"))
    assert logs == ["m.0.log.jsonl", "m.1.log.jsonl"]


# Issue 37, items 6 and 7: the shipped miniature is found and named, and messages name the real cause. Each row: the
# command, and what its output (stdout and stderr) must and must not hold.
NAMED = {
    "merge names the columns a subset adds": (
        ["merge", "real.h5", "sub2.h5", "--out", "both.h5"],
        2,
        ["cannot merge sub2.h5: it has column(s) parent_row that real.h5 lacks"],
        ["columns differ"],
    ),
    "info --plot on a store says it is a store": (
        ["info", "real.h5", "--plot", "curve.png"],
        2,
        ["real.h5 is an image store (HDF5), not a safetensors file"],
        ["not a synthkit safetensors file"],
    ),
    "info on a classifier without evaluations does not offer --plot": (
        ["info", "clf.safetensors"],
        0,
        ["no evaluations during training"],
        ["--plot"],
    ),
    "info mini describes the shipped miniature": (
        ["info", "mini"],
        0,
        ["diffusers pipeline", "synthkit_version", "0.1.0"],
        ["does not exist"],
    ),
    "a flag's help shows no value to give": (["train", "--help"], 0, ["--show "], ["<bool>"]),
    "a required argument reads as a name in the usage line": (["info", "--help"], 0, ["info [OPTIONS] PATH"], ["{"]),
    "an optional list of arguments reads as NAME...": (["merge", "--help"], 0, ["merge [OPTIONS] INPUTS..."], ["{"]),
    "the model group says what it holds": (
        ["model", "--help"],
        0,
        ["train the miniature", "--model mini"],
        ["checkpoints for testing"],
    ),
    "invert's --model names mini": (["invert", "--help"], 0, ["mini (the miniature"], []),
    "sample's --model names mini": (["sample", "--help"], 0, ["mini (the miniature"], []),
    "judge's --model names mini": (["judge", "--help"], 0, ["mini (the miniature"], []),
    "a model that fails to load suggests mini": (
        [
            "sample",
            "--prompt",
            "a {class}",
            "--model",
            "no-such-model",
            "--per-class",
            1,
            "--device",
            "cpu",
            "--out",
            "never.h5",
        ],
        2,
        ["--model mini for the miniature shipped with synthkit"],
        [],
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def named(workspace) -> Path:
    """The workspace with a subset store beside its parent (a column more), for the merge row."""
    if not (workspace / "sub2.h5").exists():
        assert run("subset", workspace / "real.h5", "--per-class", 2, "--out", workspace / "sub2.h5").exit_code == 0
    return workspace


@pytest.mark.parametrize("case", list(NAMED))
def test_messages_and_help_name_the_real_cause(case, named, monkeypatch):
    args, code, present, absent = NAMED[case]
    monkeypatch.chdir(named)
    monkeypatch.setenv("COLUMNS", "200")  # help tables on one line each, so that phrases are not wrapped
    before = tree(named)
    result = run(*args)
    text = " ".join((result.stdout + result.stderr).split())
    assert result.exit_code == code, text
    assert all(phrase in text for phrase in present), (present, text)
    assert not any(phrase in text for phrase in absent), (absent, text)
    assert tree(named) == before  # refused or read-only: nothing written


def test_a_local_folder_named_mini_is_not_the_shipped_model_and_a_note_says_which_is_used(tmp_path, monkeypatch):
    from synthkit.core.paths import MINI_ASSET, resolve_model, shadowed_mini

    monkeypatch.chdir(tmp_path)
    assert shadowed_mini("mini") is None
    (tmp_path / "mini").mkdir()
    assert resolve_model("mini") == str(MINI_ASSET) and resolve_model("./mini") == "./mini"
    assert "pass ./mini" in shadowed_mini("mini") and shadowed_mini("./mini") is None
    result = run("info", "mini")
    assert result.exit_code == 0 and "synthkit_version" in result.stdout
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mini.h5").write_bytes(b"")  # a store by that name wins for info, with a note
    result = run("info", "mini")
    assert f"the miniature shipped with synthkit is: synthkit info {MINI_ASSET}" in " ".join(result.stderr.split())
