"""Every command that writes checks its output before it reads or computes anything: the output is none of its
inputs (by path, through a link, as ./x), its folder can be written, it is not a folder where a file goes (or a
file where a folder goes), and the sizes asked for fit the memory budget. Each failure is one `error:` line, exit
code 2, and not a file changed, appeared or vanished. The one resumable-output step keeps, continues or starts an
output as the flags say. And the modules that write outputs import each other in one direction only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from synthkit.cli import app
from synthkit.core.errors import UserError
from synthkit.core.outputs import resumable_output
from synthkit.core.paths import lock_path, partial_path

from conftest import copy_store_as, run, tree


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, real_store, test_store, tiny_classifier, tiny_sd, cifar_small_archive) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    (root / "data").mkdir()
    (root / "models").mkdir()
    shutil.copy(real_store, root / "data" / "real.h5")
    shutil.copy(test_store, root / "data" / "test.h5")
    copy_store_as(real_store, root / "data" / "inv.h5", "inv")
    shutil.copy(tiny_classifier, root / "models" / "resnet18-real.safetensors")
    shutil.copytree(tiny_sd, root / "models" / "tiny-sd")
    shutil.copy(cifar_small_archive, root / "cifar10-mini.tar.gz")
    (root / "gt").mkdir()
    (root / "gt" / "gt.json").write_text(json.dumps({"images": []}))
    (root / "a-folder").mkdir()
    (root / "a-file.txt").write_text("not a folder")
    (root / "built-model").mkdir()  # a model folder synthkit built (--overwrite replaces it whole), holding a store
    (root / "built-model" / "synthkit.json").write_text(json.dumps({"kind": "mini"}))
    shutil.copy(real_store, root / "built-model" / "real.h5")
    return root


def inputs(w: Path) -> dict[str, Path]:
    return {
        "store": w / "data" / "real.h5",
        "test": w / "data" / "test.h5",
        "synthetic": w / "data" / "inv.h5",
        "classifier": w / "models" / "resnet18-real.safetensors",
        "model": w / "models" / "tiny-sd",
        "archive": w / "cifar10-mini.tar.gz",
        "gt": w / "gt",
        "models": w / "models",
        "data": w / "data",
    }


# name: (what it writes, the input its output is tried on, its arguments for an output, arguments of an absurd size)
COMMANDS = {
    "data cifar10": (
        "file",
        "archive",
        lambda c, o: ["data", "cifar10", "--source", c["archive"], "--split", "test", "--out", o, "--overwrite"],
        None,
    ),
    "data folder": (
        "file",
        "archive",
        lambda c, o: ["data", "folder", "--source", c["archive"], "--split", "test", "--out", o, "--overwrite"],
        ["--size", "100000"],
    ),
    "data cifar100": (
        "file",
        "archive",
        lambda c, o: ["data", "cifar100", "--source", c["archive"], "--out", o, "--overwrite"],
        None,
    ),
    "data stl10": (
        "file",
        "archive",
        lambda c, o: ["data", "stl10", "--source", c["archive"], "--out", o, "--overwrite"],
        None,
    ),
    "data webdataset": (
        "file",
        "archive",
        lambda c, o: ["data", "webdataset", "--source", c["archive"], "--out", o, "--overwrite"],
        ["--size", "100000"],
    ),
    "export": (
        "folder",
        "store",
        lambda c, o: ["export", c["store"], "--format", "webdataset", "--out", o, "--overwrite"],
        ["--memory-limit", "1KB"],
    ),
    "subset": ("file", "store", lambda c, o: ["subset", c["store"], "--out", o, "--overwrite"], None),
    "merge": ("file", "store", lambda c, o: ["merge", c["store"], c["test"], "--out", o, "--overwrite"], None),
    "train": (
        "file",
        "store",
        lambda c, o: [
            "train",
            "--data",
            c["store"],
            "--out",
            o,
            "--recipe",
            "quick",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--overwrite",
        ],
        ["--image-size", "100000"],
    ),
    "invert": (
        "file",
        "store",
        lambda c, o: [
            "invert",
            "--class",
            "all",
            "--data",
            c["store"],
            "--model",
            c["model"],
            "--out",
            o,
            "--device",
            "cpu",
            "--overwrite",
        ],
        ["--resolution", "100000"],
    ),
    "sample prompts": (
        "file",
        "store",
        lambda c, o: [
            "sample",
            "--prompt",
            "a {class}",
            "--init",
            c["store"],
            "--model",
            c["model"],
            "--device",
            "cpu",
            "--out",
            o,
            "--overwrite",
        ],
        ["--resolution", "100000"],
    ),
    "sample embeddings": (
        "file",
        "classifier",
        lambda c, o: ["sample", "--embeddings", c["classifier"], "--device", "cpu", "--out", o, "--overwrite"],
        None,
    ),
    "filter": (
        "file",
        "synthetic",
        lambda c, o: [
            "filter",
            "--data",
            c["synthetic"],
            "--classifier",
            c["classifier"],
            "--out",
            o,
            "--device",
            "cpu",
            "--overwrite",
        ],
        None,
    ),
    "show": ("file", "store", lambda c, o: ["show", c["store"], "--out", o, "--overwrite"], None),
    "fidelity": (
        "folder",
        "store",
        lambda c, o: [
            "fidelity",
            "--real",
            c["store"],
            "--data",
            c["synthetic"],
            "--classifier",
            c["classifier"],
            "--device",
            "cpu",
            "--out",
            o,
        ],
        None,
    ),
    "evaluate": (
        "folder",
        "test",
        lambda c, o: ["evaluate", "--model", c["classifier"], "--test", c["test"], "--device", "cpu", "--results", o],
        None,
    ),
    "judge": ("file", "store", lambda c, o: ["judge", "--data", c["store"], "--device", "cpu", "--out", o], None),
    "info --plot": ("file", "classifier", lambda c, o: ["info", c["classifier"], "--plot", o, "--overwrite"], None),
    "model train": (
        "folder",
        "store",
        lambda c, o: ["model", "train", "--data", c["store"], "--device", "cpu", "--out", o, "--overwrite"],
        None,
    ),
    "merge embeddings": (
        "file",
        "classifier",
        lambda c, o: ["merge", c["classifier"], c["classifier"], "--out", o, "--overwrite"],
        None,
    ),
    "gradcam": (
        "folder",
        "test",
        lambda c, o: ["gradcam", "--model", c["classifier"], "--data", c["test"], "--device", "cpu", "--out", o],
        None,
    ),
    "vanish": ("folder", "store", lambda c, o: ["vanish", "--data", c["store"], "--out", o], ["--upsample", "10000"]),
    "vanish-score": ("folder", "gt", lambda c, o: ["vanish-score", "--gt", c["gt"], "--out", o], None),
    "caption": (
        "file",
        "store",
        lambda c, o: [
            "caption",
            "--data",
            c["store"],
            "--model",
            c["model"],
            "--device",
            "cpu",
            "--out",
            o,
            "--overwrite",
        ],
        None,
    ),
    "model tiny-blip": ("folder", None, lambda c, o: ["model", "tiny-blip", "--out", o, "--overwrite"], None),
    "model tiny": ("folder", None, lambda c, o: ["model", "tiny", "--out", o, "--overwrite"], None),
    "model random": ("folder", None, lambda c, o: ["model", "random", "--out", o, "--overwrite"], None),
    "report": (
        "folder",
        "models",
        lambda c, o: ["report", "--results", o, "--models", c["models"], "--data", c["data"]],
        None,
    ),
}


def variant(base: str, rename: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> tuple:
    """A row of COMMANDS like `base`'s, some of its options renamed and some arguments added (no size case)."""
    kind, key, build, _ = COMMANDS[base]
    return kind, key, lambda c, o: [(rename or {}).get(a, a) for a in build(c, o)] + list(extra), None


COMMANDS |= {
    "evaluate --out": variant("evaluate", {"--results": "--out"}),
    "report --out": variant("report", {"--results": "--out"}),
    "sample classes of a store": variant("sample prompts", {"--init": "--classes"}),  # the store read for its classes
    "invert --shard auto": variant("invert", extra=("--shard", "auto")),
}
OUTPUT_OPTIONS = {"out", "plot", "results"}  # the options that name what a command writes
CASES = ["input", "link", "dot", "unwritable", "wrong kind", "absurd size"]
EXPECTED = {
    "input": "is the input",
    "link": "is the input",
    "dot": "is the input",
    "unwritable": "cannot write",
    "absurd size": "memory budget",
}


def applies(command: str, case: str) -> bool:
    """A case applies to a command that has an input of that kind (for the input cases) or a size option."""
    _, key, _, size = COMMANDS[command]
    return not (case in ("input", "link", "dot") and key is None or case == "absurd size" and size is None)


def arguments(command: str, case: str, w: Path) -> tuple[list, str]:
    kind, key, build, size = COMMANDS[command]
    c = inputs(w)
    if case == "input":
        return build(c, c[key]), EXPECTED[case]
    if case == "link":
        link = w / f"link-to-{c[key].name}"
        if not link.is_symlink():
            link.symlink_to(c[key])
        return build(c, link), EXPECTED[case]
    if case == "dot":
        return build(c, "./" + str(c[key].relative_to(w))), EXPECTED[case]
    if case == "unwritable":
        return build(c, Path("/proc") / ("x.h5" if kind == "file" else "x")), EXPECTED[case]
    if case == "wrong kind":
        return build(
            c, w / ("a-folder" if kind == "file" else "a-file.txt")
        ), "is a folder" if kind == "file" else "is a file"
    return build(c, w / "fresh-output") + size, EXPECTED[case]


@pytest.mark.parametrize("command, case", [(c, k) for c in COMMANDS for k in CASES if applies(c, k)])
def test_a_bad_output_is_refused_before_any_work(command, case, workspace, monkeypatch):
    args, expected = arguments(command, case, workspace)
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    result = run(*args)
    assert result.exit_code == 2, f"{command} / {case}: {result.output}"
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1 and expected in message, (
        f"{command} / {case}: {message}"
    )
    assert "Traceback" not in result.output and result.stdout == ""  # no note of work begun
    assert tree(workspace) == before, f"{command} / {case} changed the files"


def command_tree() -> dict[str, click.Command]:
    """Every command of the CLI (a subcommand of a group as "group command") and its click command."""
    commands, todo = {}, [("", typer.main.get_command(app))]
    while todo:
        prefix, group = todo.pop()
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            todo.append((path, cmd)) if hasattr(cmd, "commands") else commands.update({path: cmd})
    return commands


def covered(w: Path) -> set[tuple[str, str]]:
    """(command, output option) of every row of COMMANDS, read from the arguments it builds."""
    pairs = set()
    for _, _, build, _ in COMMANDS.values():
        marker = w / "the-output"
        args = [str(a) for a in build(inputs(w), marker)]
        group, path = typer.main.get_command(app), []
        for token in args:
            if token not in getattr(group, "commands", {}):
                break
            group = group.commands[token]
            path.append(token)
        pairs.add((" ".join(path), args[args.index(str(marker)) - 1]))
    return pairs


def test_every_command_and_output_option_has_a_row(tmp_path):
    """A command that writes (an --out, --plot or --results option) has a row of COMMANDS for each such option, so
    that a new command or output is checked like the others or this test fails; and every command writes."""
    writing = {
        (path, opt)
        for path, cmd in command_tree().items()
        for param in cmd.params
        if param.name in OUTPUT_OPTIONS
        for opt in param.opts
    }
    assert {path for path, _ in writing} == set(command_tree()), "a command with no output option: add it here"
    assert writing - covered(tmp_path) == set(), "commands and outputs without a row in COMMANDS"


# Odd inputs a careless user tried (issue 21's "beyond this list"): each is one error line, exit 2, nothing written.
ODD = {
    "negative lr": (
        lambda c: ["train", "--data", c["store"], "--out", "m.safetensors", "--recipe", "quick", "--lr", "-1"],
        "--lr must be",
    ),
    "nan lr": (
        lambda c: ["train", "--data", c["store"], "--out", "m.safetensors", "--recipe", "quick", "--lr", "nan"],
        "--lr must be",
    ),
    "batch over memory": (
        lambda c: [
            "train",
            "--data",
            c["store"],
            "--out",
            "m.safetensors",
            "--recipe",
            "quick",
            "--batch-size",
            "100000000",
        ],
        "memory budget",
    ),
    "empty train out": (
        lambda c: ["train", "--data", c["store"], "--out", "", "--recipe", "quick"],
        "empty output path",
    ),
    "invert nan lr": (
        lambda c: [
            "invert",
            "--class",
            "all",
            "--data",
            c["store"],
            "--model",
            c["model"],
            "--lr",
            "nan",
            "--out",
            "e.safetensors",
        ],
        "--lr must be",
    ),
    "invert weight decay": (
        lambda c: [
            "invert",
            "--class",
            "all",
            "--data",
            c["store"],
            "--model",
            c["model"],
            "--weight-decay",
            "-1",
            "--out",
            "e.safetensors",
        ],
        "--weight-decay must be",
    ),
    "nan guidance": (
        lambda c: ["sample", "--prompt", "a {class}", "--model", c["model"], "--guidance", "nan", "--out", "s.h5"],
        "--guidance must be",
    ),
    "negative save size": (
        lambda c: ["sample", "--prompt", "a {class}", "--model", c["model"], "--save-size", "-4", "--out", "s.h5"],
        "--save-size must be",
    ),
    "zero resolution": (
        lambda c: ["sample", "--prompt", "a {class}", "--model", c["model"], "--resolution", "0", "--out", "s.h5"],
        "--resolution must be",
    ),
    "template without class": (
        lambda c: ["sample", "--prompt", "a {clas}", "--model", c["model"], "--out", "s.h5"],
        "has no {class}",
    ),
    "stray comma in classes": (
        lambda c: ["sample", "--prompt", "a {class}", "--classes", "cat,,dog", "--model", c["model"], "--out", "s.h5"],
        "empty class name",
    ),
    "empty class name": (
        lambda c: ["data", "folder", "--source", c["archive"], "--class-name", "", "--out", "f.h5"],
        "--class-name is empty",
    ),
    "output inside the source": (
        lambda c: ["data", "folder", "--source", c["data"], "--out", c["data"] / "x.h5"],
        "inside the source folder",
    ),
    "grid not an image": (lambda c: ["show", c["store"], "--out", "grid.txt"], ".png"),
    "grid over memory": (lambda c: ["show", c["store"], "--out", "grid.png", "--cell", "1000000"], "memory budget"),
    "a loop of links": (lambda c: ["subset", "loop.h5", "--out", "y.h5"], "does not exist"),
    "not inception weights": (
        lambda c: [
            "fidelity",
            "--real",
            c["store"],
            "--data",
            c["synthetic"],
            "--classifier",
            c["classifier"],
            "--inception",
            c["store"],
            "--out",
            "fid",
        ],
        "is not torch-fidelity's",
    ),
    "a model twice": (
        lambda c: [
            "evaluate",
            "--model",
            c["classifier"],
            "--model",
            c["classifier"],
            "--test",
            c["test"],
            "--results",
            "r",
        ],
        "given twice",
    ),
    "nan focal": (lambda c: ["vanish", "--data", c["store"], "--focal", "nan", "--out", "v"], "--focal must be"),
    "report without models": (
        lambda c: ["report", "--results", c["data"].parent / "gt", "--models", "no-models", "--data", c["data"]],
        "is not a folder",
    ),
    "overwrite a folder that is no model": (
        lambda c: ["model", "tiny", "--out", "a-folder", "--overwrite"],
        "not a model synthkit built",
    ),
    "a broken archive": (
        lambda c: ["data", "folder", "--source", "broken.tar.gz", "--out", "f.h5"],
        "cannot read archive",
    ),
    "judge over a store given by name": (
        lambda c: ["judge", "--data", "real", "--out", "data/real.h5", "--device", "cpu"],
        "data/real.h5 is the input data/real.h5",
    ),
    "evaluate --out and --results": (
        lambda c: ["evaluate", "--model", c["classifier"], "--test", c["test"], "--out", "r1", "--results", "r2"],
        "--out r1 and --results r2 both name the output folder",
    ),
    "report --out and --results": (
        lambda c: ["report", "--out", "r1", "--results", "r2"],
        "--out r1 and --results r2 both name the output folder",
    ),
    "a model folder holding its input": (
        lambda c: [
            "model",
            "train",
            "--data",
            "built-model/real.h5",
            "--out",
            "built-model",
            "--device",
            "cpu",
            "--overwrite",
        ],
        "built-model/real.h5 lies inside the output folder built-model",
    ),
    "model train over the model it starts from": (
        lambda c: [
            "model",
            "train",
            "--data",
            c["store"],
            "--start-from",
            c["model"],
            "--out",
            c["model"],
            "--device",
            "cpu",
            "--overwrite",
        ],
        "tiny-sd is the input",
    ),
    "resume with other settings": (
        lambda c: [
            "train",
            "--data",
            c["store"],
            "--out",
            c["classifier"],
            "--recipe",
            "quick",
            "--steps",
            "99",
            "--resume",
        ],
        "was made with steps 6, not 99",
    ),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_inputs_are_one_error_line_and_write_nothing(case, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    if not (workspace / "loop.h5").is_symlink():
        (workspace / "loop.h5").symlink_to("loop.h5")
        (workspace / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    build, expected = ODD[case]
    before = tree(workspace)
    result = run(*build(inputs(workspace)))
    message = result.stderr.strip()
    assert result.exit_code == 2 and message.startswith("error:") and len(message.splitlines()) == 1, (
        f"{case}: {result.output}"
    )
    assert expected in message and "Traceback" not in result.output and result.stdout == "", f"{case}: {message}"
    assert tree(workspace) == before, f"{case} changed the files"


def test_a_results_folder_that_holds_an_input_is_written_into(tmp_path, test_store, tiny_classifier, monkeypatch):
    """An output folder that is only written into (not replaced) may hold the inputs: evaluate --out data, where
    data/test.h5 is the test store, writes its table and figures beside it and leaves it as it was."""
    (tmp_path / "data").mkdir()
    shutil.copy(test_store, tmp_path / "data" / "test.h5")
    shutil.copy(tiny_classifier, tmp_path / "data" / "clf.safetensors")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path / "data")
    result = run(
        "evaluate", "--model", "data/clf.safetensors", "--test", "data/test.h5", "--device", "cpu", "--out", "data"
    )
    assert result.exit_code == 0, result.output
    after = tree(tmp_path / "data")
    assert {k: after[k] for k in before} == before and {"accuracy.csv", "accuracy.md"} <= set(after)


def other_process_sees_writer(out: Path) -> bool:
    """Whether another process finds `out` being written (its writer lock held)."""
    probe = f"from synthkit.core.locks import holder; print(holder({str(out)!r}))"
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    return seen == str(os.getpid())


def test_resumable_output_writes_the_partial_under_the_lock_and_renames_it(tmp_path):
    out = tmp_path / "sub" / "o.bin"
    with resumable_output(out, overwrite=False, resume=False) as step:
        assert not step.complete and not step.resuming and step.partial == partial_path(out)
        assert other_process_sees_writer(out)
        step.partial.write_text("new")
        assert not out.exists()
    assert out.read_text() == "new" and step.complete
    assert not partial_path(out).exists() and not lock_path(out).exists() and not other_process_sees_writer(out)


def test_resumable_output_keeps_a_finished_output_with_resume_and_refuses_it_without(tmp_path):
    out = tmp_path / "o.bin"
    out.write_text("done")
    with pytest.raises(UserError, match="already exists"):
        with resumable_output(out, overwrite=False, resume=False):
            pytest.fail("the block ran for an existing output")
    assert not lock_path(out).exists()
    with resumable_output(out, overwrite=False, resume=True) as step:
        assert step.complete and not step.resuming
    assert out.read_text() == "done" and not partial_path(out).exists()


def test_resumable_output_continues_a_partial_with_resume_and_refuses_it_without(tmp_path):
    out = tmp_path / "o.bin"
    partial_path(out).write_text("first half;")
    with pytest.raises(UserError, match="--resume to continue"):
        with resumable_output(out, overwrite=False, resume=False):
            pytest.fail("the block ran over an interrupted run's .partial")
    assert partial_path(out).read_text() == "first half;"
    with resumable_output(out, overwrite=False, resume=True) as step:
        assert step.resuming and not step.complete
        with step.partial.open("a") as f:
            f.write("second half")
    assert out.read_text() == "first half;second half"
    with resumable_output(out, overwrite=True, resume=False) as step:
        assert not step.resuming and not step.complete
        step.partial.write_text("again")
    assert out.read_text() == "again"


def test_resumable_output_leftovers_count_as_an_interrupted_run(tmp_path):
    out, state = tmp_path / "o.bin", tmp_path / "o.state"
    state.write_text("state")
    with pytest.raises(UserError, match="o.state"):
        with resumable_output(out, overwrite=False, resume=False, leftovers=[state]):
            pytest.fail("the block ran over a leftover state")


@pytest.mark.parametrize("error, kept", [(UserError("bad input"), False), (RuntimeError("a bug"), True)])
def test_resumable_output_removes_the_partial_on_bad_input_and_keeps_it_otherwise(tmp_path, error, kept):
    out = tmp_path / "o.bin"
    with pytest.raises(type(error)):
        with resumable_output(out, overwrite=False, resume=False) as step:
            step.partial.write_text("half")
            raise error
    assert partial_path(out).exists() == kept and not out.exists() and not lock_path(out).exists()


def test_resumable_output_keeps_the_partial_when_interrupted(tmp_path):
    out = tmp_path / "o.bin"
    with pytest.raises(KeyboardInterrupt):
        with resumable_output(out, overwrite=False, resume=False) as step:
            step.partial.write_text("half")
            raise KeyboardInterrupt
    assert partial_path(out).read_text() == "half" and not out.exists() and not lock_path(out).exists()


def test_resumable_output_gives_the_name_only_to_a_partial_that_verifies(tmp_path):
    out = tmp_path / "o.bin"

    def verify(partial: Path) -> None:
        if partial.read_text() != "whole":
            raise UserError(f"{partial} is damaged: it keeps its .partial name")

    with pytest.raises(UserError, match="keeps its .partial name"):
        with resumable_output(out, overwrite=False, resume=False, verify=verify) as step:
            step.partial.write_text("damaged")
    assert partial_path(out).read_text() == "damaged" and not out.exists() and not lock_path(out).exists()
    with resumable_output(out, overwrite=True, resume=False, verify=verify) as step:
        step.partial.write_text("whole")
    assert out.read_text() == "whole"


def test_resumable_output_keeps_a_partial_of_another_job_that_it_refuses_to_resume(tmp_path):
    out = tmp_path / "o.bin"
    partial_path(out).write_text("other options")

    def same_job(partial: Path) -> None:
        raise UserError(f"{partial} was started with other options")

    with pytest.raises(UserError, match="other options"):
        with resumable_output(out, overwrite=False, resume=True, same_job=same_job):
            pytest.fail("the block ran over another job's .partial")
    assert partial_path(out).read_text() == "other options" and not lock_path(out).exists()
