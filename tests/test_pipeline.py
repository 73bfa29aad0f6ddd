"""The study's graph, shrunken to a few images and steps, run end to end through the CLI."""

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run

ROOT = Path(__file__).resolve().parents[1]


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, f"synthkit {' '.join(map(str, args))}\n{result.output}"
    return result


def test_shrunken_study_end_to_end(tmp_path, monkeypatch, cifar_small_archive, tiny_sd):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_sd, "models/tiny-sd")
    ok(
        "data",
        "cifar10",
        "--source",
        cifar_small_archive,
        "--split",
        "train",
        "--per-class",
        4,
        "--out",
        "data/real.h5",
    )
    ok("data", "cifar10", "--source", cifar_small_archive, "--split", "test", "--out", "data/test.h5")
    ok(
        "sample",
        "--prompt",
        "a photo of a {class}",
        "--per-class",
        4,
        "--model",
        "models/tiny-sd",
        "--steps",
        2,
        "--resolution",
        64,
        "--init",
        "real",
        "--out",
        "data/sd.h5",
    )
    ok(
        "invert",
        "--class",
        "all",
        "--data",
        "real",
        "--model",
        "models/tiny-sd",
        "--resolution",
        64,
        "--updates",
        2,
        "--out",
        "models/inv/all.safetensors",
    )
    ok("sample", "--embeddings", "models/inv/all.safetensors", "--per-image", 1, "--steps", 2, "--out", "data/inv.h5")
    ok(
        "train",
        *(x for d in ("real", "inv", "sd", "real,inv", "real,sd") for x in ("--data", d)),
        "--out",
        "models/resnet18-{data}.safetensors",
        "--recipe",
        "quick",
        "--steps",
        2,
        "--batch-size",
        20,
        "--evals",
        1,
        "--test",
        "test",
        "--device",
        "cpu",
    )
    models = [f"models/resnet18-{d}.safetensors" for d in ("real", "inv", "sd", "real+inv", "real+sd")]
    ok("evaluate", *(x for m in models for x in ("--model", m)), "--device", "cpu")
    ok("fidelity", "--real", "real", "--data", "sd", "--data", "inv", "--classifier", models[0], "--device", "cpu")
    ok("gradcam", "--model", models[0], "--model", models[1], "--model", models[2], "--n", 4, "--device", "cpu")
    ok("vanish", "--data", "real", "--data", "sd", "--data", "inv", "--n", 5)
    for name in ("real", "sd", "inv"):
        ok("show", name, "--out", f"results/grids/{name}.png", "--per-row", 3)
    ok("report")

    readme = Path("results/README.md").read_text()
    rows = {r["training_data"]: r for r in csv.DictReader(open("results/accuracy.csv"))}
    table = re.findall(
        r"^\| .*\(`(.+?)`\) \| ([\d.]+) \| 1 \| ([\d.]+) \| ([\d.-]+) \| resnet18 \(cifar stem\) \| quick \| 2 \| 40 "
        r"\| (.+?) \| (\d+) \| 60 \|$",
        readme,
        re.M,
    )
    assert [t[0] for t in table] == ["real", "inv", "sd", "real+inv", "real+sd"]
    for name, ours, best, _, batch, train_images in table:
        assert ours == f"{100 * float(rows[name]['accuracy']):.2f}" and train_images == rows[name]["train_images"]
        assert best == ours  # one evaluation during training, at the end: the same images, the same model
        assert batch == ("10 real + 10 synthetic" if "+" in name else "20 from all stores")
    assert "Every row trained the same number of steps." in readme and "One seed per row: no spread" in readme
    assert "![test accuracy against step](accuracy_steps.png)" in readme and Path("results/accuracy_steps.png").exists()
    assert "were scored on the DI and SD versions of the test images" in readme
    assert [t[3] for t in table] == ["81.80", "78.63", "52.57", "86.14", "83.94"]
    assert "These synthetic images are noise" in readme
    for figure in (
        "grids/real.png",
        "grids/sd.png",
        "grids/inv.png",
        "gradcam/gradcam_grid.png",
        "vanish/histograms.png",
    ):
        assert f"]({figure})" in readme and (Path("results") / figure).exists()
    assert "## Fidelity" in readme and "| inv | classifier |" in readme and "Does fidelity predict accuracy?" in readme
    assert "| n_segments |" in readme and "How many lines a small image really yields" in readme

    Path("elsewhere").mkdir()
    Path("data").rename("elsewhere/data")
    ok("report", "--models", Path("models").resolve(), "--data", "elsewhere/data")
    again = Path("results/README.md").read_text()
    assert again.count("models/resnet18-") >= 5 and "`elsewhere/data/sd.h5` (sd)" in again


def test_report_without_results_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("report")
    assert result.exit_code == 2 and "run the pipeline first" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_shows_the_plan(tmp_path):
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "reproduce", f"STAMPS={tmp_path}/stamps", f"VENV={tmp_path}/venv"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for step in (
        "data cifar10",
        "sample --prompt",
        "invert --class airplane",
        "sample --embeddings",
        "train --data real --data inv --data sd --data real,inv --data real,sd --out "
        "'models/resnet18-{data}-s{seed}.safetensors' --seed 0",
        "filter --data data/inv.h5 --classifier models/resnet18-real-s0.safetensors",
        "train --data inv-kept --data real,inv-kept",
        "evaluate",
        "fidelity --real data/real.h5",
        "gradcam",
        "vanish",
        "report",
    ):
        assert step in out.stdout, step
    help_text = subprocess.run(["make", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    for var in (
        "MODEL",
        "PER_CLASS",
        "PER_IMAGE",
        "SD_PER_CLASS",
        "RECIPE",
        "SEEDS",
        "TRAIN_STEPS",
        "SEED",
        "DEVICE",
        "SHARDS",
    ):
        assert var + "=" in help_text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_names_every_variable_and_the_readme_tells_the_plan_in_its_order(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    help_text = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    variables = re.findall(r"^([A-Z_]+) *\?=", makefile, re.M)
    assert len(variables) > 50 and [v for v in variables if not re.search(rf"(^| ){v}=", help_text, re.M)] == []
    plan = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "reproduce",
            "VENV=v",
            f"SCENES={tmp_path}",
            "YUD=",
            "SD_INIT=real",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    steps = ["invert --class", "sample --embeddings", "caption", "sample --prompt-from", "train", "filter", "evaluate"]
    steps += ["fidelity", "gradcam", "vanish --data data/real.h5", "data folder", "report"]
    places = [plan.index(f"v/bin/synthkit {step}") for step in steps]
    assert places == sorted(places), steps
    readme = (ROOT / "README.md").read_text()
    order = re.search(r"plan, in this order: (.*?)`make help`", readme, re.S).group(1)
    named = ["`data`", "`invert`", "`inv`", "`captions`", "`sd`", "`train`", "`filter`", "`evaluate`", "`fidelity`"]
    named += ["`gradcam`", "`vanish`", "`vanish-score`", "`geometry`", "`report`"]
    assert [order.index(n) for n in named] == sorted(order.index(n) for n in named)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_demo_takes_the_committed_sample_where_there_is_no_cifar_archive(tmp_path):
    """A clone without ../shared runs the demo offline on tests/data's 12 train and 6 test images per class; with the
    archive, 20 and 10 per class from it."""

    def plan(cifar: Path) -> str:
        out = subprocess.run(
            ["make", "-n", "-C", str(ROOT), "demo", f"CIFAR={cifar}", f"DEMO_DIR={tmp_path}/d", f"VENV={tmp_path}/v"],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    absent = plan(tmp_path / "absent.tar.gz")
    sample = ROOT / "tests/data/cifar10-mini.tar.gz"
    assert f"data cifar10 --source {sample} --split train --per-class 12 " in absent
    assert f"data cifar10 --source {sample} --split test --per-class 6 " in absent
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"")
    present = plan(archive)
    assert f"data cifar10 --source {archive} --split train --per-class 20 " in present
    assert f"data cifar10 --source {archive} --split test --per-class 10 " in present


def test_makefile_runs_the_study_on_your_own_stores(tmp_path):
    """make reproduce REAL=... TEST=...: the stores are taken whole (or PER_CLASS of each class), classes and prompts
    come from them, and inversion runs as one job over whatever classes they hold."""
    (tmp_path / "data").mkdir()
    for name in ("mine.h5", "mine-test.h5"):
        (tmp_path / "data" / name).touch()
    out = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "reproduce",
            "STAMPS=stamps",
            "VENV=venv",
            "REAL=data/mine.h5",
            "TEST=data/mine-test.h5",
            "MODEL=my-sd",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    plan = " ".join(out.stdout.split())
    assert "venv/bin/synthkit subset data/mine.h5 --seed 0 --out data/real.h5 --overwrite" in plan
    assert "venv/bin/synthkit subset data/mine-test.h5 --out data/test.h5 --overwrite" in plan
    assert (
        "caption --data data/real.h5" in plan
        and "sample --prompt-from caption" in plan
        and "--init data/real-captions.h5" in plan
    )
    assert "invert --class all --data data/real.h5 --model my-sd" in plan and "invert --class airplane" not in plan
    assert "data cifar10" not in plan and "--data real,inv " in plan
    subset = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "data/real.h5",
            "STAMPS=stamps",
            "VENV=venv",
            "REAL=data/mine.h5",
            "TEST=data/mine-test.h5",
            "PER_CLASS=50",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    subset = " ".join(subset.split())
    assert "subset data/mine.h5 --per-class 50 --seed 0 --out data/real.h5" in subset
    alone = subprocess.run(
        ["make", "-n", "-f", str(ROOT / "Makefile"), "reproduce", "STAMPS=stamps", "VENV=venv", "REAL=data/mine.h5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert alone.returncode != 0 and "REAL=data/mine.h5 needs TEST=" in alone.stderr


def test_every_classifier_trains_at_the_real_store_size_or_image_size(tmp_path):
    """Prompt images are saved at 128 px (SD_SAVE_SIZE), the real store is CIFAR's 32 px: every row trains at the
    real store's size unless IMAGE_SIZE says otherwise, so that the rows compare like with like."""
    plan = " ".join(planned(tmp_path).split())
    commands = re.findall(r"synthkit train (.*?)--resume", plan)
    assert len(commands) == 2  # the rows that need no filtered store, then the filtered ones
    size_of_real = (
        "--image-size $(venv/bin/python -c 'import sys; from synthkit.io.store import Store; "
        "print(Store(sys.argv[1]).image_shape[0])' data/real.h5)"
    )
    assert all(size_of_real in c for c in commands)
    plan = " ".join(planned(tmp_path, "IMAGE_SIZE=64").split())
    assert len(re.findall(r"synthkit train .*?--image-size 64 ", plan)) == 2


def test_every_row_trains_the_recipes_steps_once_per_seed(tmp_path):
    """Through the Makefile: each job trains all its rows for every seed of SEEDS, for the same steps (the recipe's,
    or TRAIN_STEPS), scoring the real test store on the way."""
    plan = " ".join(planned(tmp_path, "SEEDS=0 1 2", "TRAIN_STEPS=77", "RECIPE=quick").split())
    commands = re.findall(r"synthkit train (.*?)--resume", plan)
    assert len(commands) == 2 and all(
        "--recipe quick" in c and "--steps 77" in c and "--seed 0 --seed 1 --seed 2" in c and "--test data/test.h5" in c
        for c in commands
    )
    assert sum(len(re.findall(r"--data \S+", c)) for c in commands) == 7
    assert "--classifier models/resnet18-real-s0.safetensors" in plan  # the filter uses the first seed's classifier
    plan = " ".join(planned(tmp_path).split())
    assert "--steps" not in re.findall(r"synthkit train (.*?)--resume", plan)[0]  # the recipe's own steps


def planned(cwd, *variables):
    """`make -n train` run in cwd (so data/ and models/ are cwd's), stamps in cwd/stamps: the planned commands."""
    out = subprocess.run(
        ["make", "-n", "-f", str(ROOT / "Makefile"), "train", "STAMPS=stamps", "VENV=venv", *variables],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_recipes_own_image_size_wins_unless_image_size_is_given(tmp_path):
    """`make reproduce RECIPE=study` trains at the recipe's 224 px (no --image-size from the real store's 32 px);
    IMAGE_SIZE overrides it; recipes without a size of their own train at the real store's."""
    from synthkit.core.config import RECIPES

    def sizes(*variables: str) -> set[str]:
        jobs = re.findall(r"synthkit train (.*?)--resume", " ".join(planned(tmp_path, *variables).split()))
        assert len(jobs) == 2  # the main rows and the filtered ones
        return {(re.findall(r"--image-size (\S+)", job) or ["none"])[0] for job in jobs}

    for name, recipe in RECIPES.items():
        expected = {"none"} if recipe["image_size"] else {"$(venv/bin/python"}  # the real store's, read at run time
        assert sizes(f"RECIPE={name}") == expected, name
        assert sizes(f"RECIPE={name}", "IMAGE_SIZE=32") == {"32"}, name
    assert RECIPES["study"]["image_size"] == 224


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_sweep_plan(tmp_path):
    """make sweep: nested subsets cut from the largest size, one inversion, each size's DI store from its own images'
    embeddings, every classifier of the sweep in one job, evaluated apart from the table, then the report."""
    out = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "sweep",
            "STAMPS=stamps",
            "VENV=venv",
            "MODEL=my-sd",
            "SIZES=50 10 200",
            "SWEEP_SEEDS=0 1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    plan = " ".join(out.stdout.split())
    assert "data cifar10 " in plan and "--per-class 200 --seed 0 --out data/sweep/real-200.h5" in plan
    for n in (10, 50):
        assert f"subset data/sweep/real-200.h5 --per-class {n} --seed 0 --out data/sweep/real-{n}.h5" in plan
        assert f"sample --embeddings models/sweep/inv.safetensors --only data/sweep/real-{n}.h5" in plan
    assert plan.count(" invert --class all --data data/sweep/real-200.h5 ") == 1 and plan.count("synthkit train ") == 1
    train = re.search(r"synthkit train (.*?)--resume", plan).group(1)
    assert len(re.findall(r"--data \S+", train)) == 9 and "--seed 0 --seed 1" in train
    assert (
        "--data data/sweep/real-10.h5,data/sweep/inv-10.h5 " in train
        and "'models/sweep/resnet18-{data}-s{seed}.safetensors'" in train
    )
    assert "data/sweep/real-200.h5)" in train  # trained at the sweep's real size
    evaluate = re.search(r"synthkit evaluate (.*?)--out results/sweep", plan).group(1)
    assert evaluate.count("--model") == 18 and "models/sweep/resnet18-real-10+inv-10-s1.safetensors" in evaluate
    assert re.findall(r"synthkit (\w+)", plan)[-1] == "report"  # the report last (make -w may add its own lines)
    reuse = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "sweep",
            "STAMPS=stamps",
            "VENV=venv",
            "SIZES=5 20",
            "SWEEP_FROM=data/real.h5",
            "SWEEP_EMB=models/inv/all.safetensors",
            "INVERT_BY=all",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    reuse = " ".join(reuse.split())
    assert "subset data/real.h5 --per-class 20 --seed 0 --out data/sweep/real-20.h5" in reuse
    assert (
        "--embeddings models/inv/all.safetensors --only data/sweep/real-5.h5" in reuse
        and "models/sweep/inv.safetensors" not in reuse
    )


STUDY_FILES = [  # the graph under `train`, upstream first
    ["data/real.h5", "data/test.h5"],
    ["data/real-captions.h5"],
    [
        "data/sd.h5",
        *(
            f"models/inv/{c}.safetensors"
            for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        ),
    ],
    ["data/inv.h5"],
    [f"models/resnet18-{d}-s0.safetensors" for d in ("real", "inv", "sd", "real+inv", "real+sd")],
    ["data/inv-kept.h5"],
    [f"models/resnet18-{d}-s0.safetensors" for d in ("inv-kept", "real+inv-kept")],
]
SEVEN = sorted(["real", "inv", "inv-kept", "sd", "real+inv", "real+inv-kept", "real+sd"])
# A stand-in for synthkit: writes the file after --out (a pattern with {data} writes nothing), so that make runs the
# graph for real and what a stage would retrain can be read off the classifiers its leftovers step removed.
FAKE_SYNTHKIT = """#!/bin/sh
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done
case "$out" in *"{"*|"") ;; *) mkdir -p "$(dirname "$out")"; touch "$out";; esac
"""


STAGES = ("data", "captions", "sd", "invert", "inv", "filter", "train", "analysis", "sweep", "geometry")


def stamped(cwd, *variables):
    """Write the stage stamps for these settings as a real run does (a dry run never writes them)."""
    out = subprocess.run(
        [
            "make",
            "-f",
            str(ROOT / "Makefile"),
            "STAMPS=stamps",
            "VENV=venv",
            *variables,
            *[f"stamps/{s}" for s in STAGES],
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def finish_everything(cwd, when):
    """Make every file of the graph look finished, each newer than what it is made from (and the stamps)."""
    import os

    for i, layer in enumerate(STUDY_FILES):
        for name in layer:
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).touch()
            os.utime(cwd / name, (when + 10 * (i + 1), when + 10 * (i + 1)))


def retrained(cwd, *variables):
    """Run `make train` with the stand-in synthkit: the rows whose finished classifiers were removed as stale
    (synthkit train --resume retrains those and keeps the rest), and the plan make printed."""
    fake = cwd / "fake-synthkit"
    fake.write_text(FAKE_SYNTHKIT)
    fake.chmod(0o755)
    out = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "train", "STAMPS=stamps", "VENV=venv", f"SK={fake}", *variables],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    gone = [
        name
        for layer in STUDY_FILES
        for name in layer
        if name.startswith("models/resnet18-") and not (cwd / name).exists()
    ]
    return sorted(re.fullmatch(r"models/resnet18-(.+)-s0\.safetensors", name).group(1) for name in gone), out.stdout


# A stand-in for synthkit that writes what each command of the demo's graph writes (train's patterned outputs, the
# folders of results), so that make runs the whole graph and a second run has nothing to do.
DEMO_SYNTHKIT = """#!/bin/sh
out=""; results="results"; data=""; seeds=""; prev=""
for a in "$@"; do
  case "$prev" in --out) out="$a";; --results) results="$a";; --data) data="$data $a";; --seed) seeds="$seeds $a";; esac
  prev="$a"
done
put() { mkdir -p "$(dirname "$1")"; touch "$1"; }
case "$1" in
  train) for d in $data; do for s in $seeds; do
    name=$(echo "$d" | tr , '\\n' | sed 's|.*/||; s|[.]h5$||' | paste -sd+)
    put "$(printf '%s' "$out" | sed "s|{data}|$name|; s|{seed}|$s|")"
  done; done;;
  fidelity|gradcam|vanish|vanish-score) put "$out/summary.json";;
  evaluate) put "${out:-$results}/accuracy.md";;
  report) put results/README.md;;
  *) put "$out";;
esac
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_demo_is_kept_apart_from_the_study(tmp_path):
    """make demo works in demo/ with its own files and stage settings: a later make report or evaluate in the main
    folder plans nothing on the demo's files, and the demo made again plans nothing."""
    import os

    fake = tmp_path / "fake-synthkit"
    fake.write_text(DEMO_SYNTHKIT)
    fake.chmod(0o755)
    main = tmp_path / "main"
    main.mkdir()

    def make(*args: str) -> str:
        out = subprocess.run(  # not under the caller's make (CI runs the suite by make test): no make[1] lines
            ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), *args, "VENV=venv", f"SK={fake}",
             "IMAGE_SIZE=32", "YUD=absent"],
            cwd=main,
            env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    shown = make("demo")
    demo = main / "demo"
    assert "the demo's report: demo/results/README.md" in shown
    assert (demo / "results/README.md").exists() and (demo / "data/real.h5").exists()
    assert (demo / "models/resnet18-real+inv-kept-s1.safetensors").exists()
    assert "quick" in (demo / ".make/train").read_text()
    assert not any((main / d).exists() for d in ("data", "models", "results", ".make"))
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    for target in ("report", "evaluate"):
        plan = make("-n", target).replace(str(fake), "synthkit")
        assert "demo/" not in plan and "synthkit data cifar10" in plan, plan
    planned = make("-n", "demo").split("SWEEP_EMB=models/inv/all.safetensors\n", 1)[1]
    commands = [line.replace(str(fake), "synthkit") for line in planned.splitlines() if str(fake) in line]
    assert commands == ["synthkit report"] and "rm " not in planned, planned  # sweep writes the report again
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(main)) == ["demo"]  # dry runs write no stage settings: nothing else


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_n_mini_study_plans_the_studys_graph_on_the_miniature_and_changes_no_file(tmp_path):
    """make -n mini-study: the study's rows over 3 seeds on --model mini, 50 real images per class (yours replace it),
    DI at MINI_UPDATES with 5 samples per image, as many text-to-image samples of the class template for the sd row,
    2,000 real test images, one recipe and step budget; its own values replace yours, and are named. Neither a fresh
    folder nor an existing mini-study/ gets a file."""
    import os

    here, venv = tmp_path / "here", tmp_path / "venv"
    here.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/synthkit").touch()
    cifar = tmp_path / "cifar.tar.gz"
    cifar.touch()

    def plan(*variables: str) -> str:
        out = subprocess.run(
            ["make", "--no-print-directory", "-n", "-f", str(ROOT / "Makefile"), "mini-study", f"VENV={venv}"]
            + [f"CIFAR={cifar}", *variables],
            cwd=here,
            env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    shown = plan()
    for command in (
        "synthkit data cifar10 --source {cifar} --split train --per-class 50 --seed 0 --out data/real.h5",
        "synthkit data cifar10 --source {cifar} --split test --per-class 200 --seed 0 --out data/test.h5",
        "synthkit invert --class all --data data/real.h5 --model mini",
        "--updates 1000",
        "synthkit sample --embeddings models/inv/all.safetensors --model mini --per-image 5",
        "synthkit sample --prompt 'a photo of a {{class}}' --classes data/real.h5 --per-class 250 --model mini",
        "synthkit train --data real --data inv --data sd --data real,inv --data real,sd --out "
        "'models/resnet18-{{data}}-s{{seed}}.safetensors' --seed 0 --seed 1 --seed 2",
        "synthkit train --data inv-kept --data real,inv-kept",
        "--recipe quick --steps 300",
        "synthkit judge --data data/real.h5 --data data/test.h5 --data data/sd.h5 --data data/inv.h5 --model mini",
        "synthkit report",
        "the mini-study's report: mini-study/results/README.md",
    ):
        assert command.format(cifar=cifar) in shown, command
    sd = next(line for line in shown.splitlines() if "synthkit sample --prompt" in line)
    assert "--init" not in sd and "vanish-score" not in shown and "data folder" not in shown  # text to image; no scenes
    assert "its own values replace" not in shown and "\n(mini-study/ does not exist yet" in shown
    bigger = plan("PER_CLASS=500", "MINI_STEPS=40", "MINI_UPDATES=7", "MODEL=x", "SEEDS=4")
    assert "--split train --per-class 500 " in bigger and "--per-class 2500 --model mini" in bigger
    assert "--updates 7 " in bigger and "--steps 40 " in bigger and "-s{seed}.safetensors' --seed 4 \\\n" in bigger
    assert 'echo "mini-study: its own values replace yours of MODEL"\n' in bigger
    assert os.listdir(here) == []
    (here / "mini-study").mkdir()
    assert "\n(mini-study/ does not exist yet" not in plan() and os.listdir(here / "mini-study") == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_mini_study_shrunken_runs_its_graph_and_says_which_claims_held(tmp_path, cifar_small_archive):
    """make mini-study with synthkit itself on 3 images per class and 2 steps of everything: every row's classifier
    for every seed, and a report with the table (± over seeds), accuracy against step, the judge on every store, DI
    samples beside their sources, what differs from the study, and a line per claim. Made again, it does nothing."""
    import os
    import sys

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for name, command in (("python", sys.executable), ("synthkit", f"{sys.executable} -m synthkit")):
        (venv / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (venv / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this tree's synthkit
    seeds = (0, 1)
    shrunk = [
        f"VENV={venv.parent}",
        f"CIFAR={cifar_small_archive}",
        "PER_CLASS=3",
        "TEST_PER_CLASS=3",
        "PER_IMAGE=2",
        "MINI_UPDATES=2",
    ]
    shrunk += ["MINI_STEPS=2", "DI_STEPS=2", "SD_STEPS=2", "BATCH=8", "EVALS=2", f"SEEDS={' '.join(map(str, seeds))}"]
    shrunk += ["GRADCAM_N=4", "VANISH_N=5", "JUDGE_N=1", "FIDELITY_N=3", "DEVICE=cpu"]

    def make() -> str:
        out = subprocess.run(
            ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "mini-study", *shrunk],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    make()
    study = tmp_path / "mini-study"
    for row in ("real", "inv", "sd", "real+inv", "real+sd", "inv-kept", "real+inv-kept"):
        for seed in seeds:
            assert (study / f"models/resnet18-{row}-s{seed}.safetensors").exists(), (row, seed)
    readme = (study / "results/README.md").read_text()
    for section in (
        "A miniature generator",
        "What differs from the study",
        "## Test accuracy (ResNet-18, real CIFAR-10 test images)",
        "![test accuracy against step](accuracy_steps.png)",
        "## The study's claims, here",
        "## Do the pictures show their class?",
        "## Diffusion Inversion: real images beside their samples",
    ):
        assert section in readme, section
    assert re.search(r"^\| real \(`real`\) \| [\d.]+ ± [\d.]+ \| 2 \|", readme, re.M)
    judged = re.findall(r"^\| `data/(real|test|sd|inv)\.h5` \|", readme, re.M)
    assert sorted(set(judged)) == ["inv", "real", "sd", "test"], judged
    claims = [line for line in readme.splitlines() if line.startswith("- **") and "against `" in line]
    assert [c.split("**")[1] for c in claims] == [
        "real+DI beats real",
        "DI alone comes within 5 points of real",
        "DI beats prompt samples",
    ]
    assert all(re.search(r"\*\*(held|not held|too close to call)\*\* here\. .* a margin of [+-]", c) for c in claims)
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}
    assert not [line for line in make().splitlines() if line.startswith(str(venv))]  # finished: nothing to redo
    assert {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_redoes_a_changed_stage_and_what_follows(tmp_path):
    import time

    def reset():  # every file finished, newer than the stamps
        for p in (tmp_path / "stamps").iterdir():
            os.utime(p, (past, past))
        finish_everything(tmp_path, past)

    import os

    stamped(tmp_path)
    stamps = {p.name: p.read_text() for p in (tmp_path / "stamps").iterdir()}
    assert set(stamps) == {
        "data",
        "captions",
        "sd",
        "invert",
        "inv",
        "filter",
        "train",
        "analysis",
        "sweep",
        "geometry",
    } and stamps["train"].split() == ["di"]
    past = time.time() - 1000
    reset()
    assert "bin/synthkit" not in planned(tmp_path), "nothing to redo when nothing changed"
    assert all(p.stat().st_mtime == past for p in (tmp_path / "stamps").iterdir())  # same settings: stamps untouched

    rows, plan = retrained(
        tmp_path, "TRAIN_STEPS=5"
    )  # a training setting: the train stamp is rewritten, all seven retrain
    assert (tmp_path / "stamps" / "train").read_text().split() == ["di", "5"]
    assert all(p.stat().st_mtime == past for p in (tmp_path / "stamps").iterdir() if p.name != "train")
    assert rows == SEVEN and "--steps 5" in plan
    assert "invert" not in plan and "sample" not in plan and "data cifar10" not in plan

    reset()  # as if the seven had been retrained since
    assert "bin/synthkit" not in planned(tmp_path, "TRAIN_STEPS=5")
    rows, plan = retrained(
        tmp_path, "TRAIN_STEPS=5", "UPDATES=7"
    )  # an inversion setting: inversion, DI sampling, their rows
    assert "--updates 7" in plan and len(re.findall(r" invert --class ", plan)) == 10
    assert "sample --embeddings" in plan and "--out data/inv.h5" in plan and " merge " not in plan
    assert rows == ["inv", "inv-kept", "real+inv", "real+inv-kept"] and " filter --data data/inv.h5 " in plan
    assert "sample --prompt" not in plan and "data cifar10" not in plan

    reset()
    rows, plan = retrained(
        tmp_path, "TRAIN_STEPS=5", "UPDATES=7", "PER_CLASS=20"
    )  # the real subset: everything is redone
    assert (
        "data cifar10" in plan and "--per-class 20" in plan and "sample --prompt" in plan and "invert --class" in plan
    )
    assert rows == SEVEN


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_each_store_is_written_once_unless_sharded(tmp_path):
    writes = lambda plan, store: re.findall(rf"--out {store}\b", plan)  # noqa: E731
    plan = planned(tmp_path)
    assert " merge " not in plan and "--shard" not in plan
    for store in ("data/real.h5", "data/sd.h5", "data/inv.h5"):
        assert len(writes(plan, store)) == 1, store
    plan = planned(tmp_path, "SHARDS=2", "INVERT_BY=all")
    for kind in ("sd", "inv"):
        assert (
            len(writes(plan, rf"data/{kind}\.shard-[01]-of-2\.h5")) == 2
            and f"--shard 1/2 --out data/{kind}.shard-1-of-2.h5" in plan
        )
        assert f"merge data/{kind}.shard-0-of-2.h5 data/{kind}.shard-1-of-2.h5 --out data/{kind}.h5" in plan
    assert len(re.findall(r" invert --class all ", plan)) == 1 and "--embeddings models/inv/all.safetensors " in plan


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_prompt_with_quotes_survives_the_stamps_and_the_command(tmp_path):
    import shlex

    prompt = 'a {class}\'s "photo"'
    stamped(tmp_path, f"SD_PROMPT={prompt}", "SD_PROMPTS=template")
    plan = planned(tmp_path, f"SD_PROMPT={prompt}", "SD_PROMPTS=template")
    assert prompt in (tmp_path / "stamps" / "sd").read_text()
    command = next(line for line in plan.splitlines() if " sample --prompt " in line).rstrip(" \\")
    assert shlex.split(command)[shlex.split(command).index("--prompt") + 1] == prompt
    before = (tmp_path / "stamps" / "sd").stat().st_mtime_ns
    planned(tmp_path, f"SD_PROMPT={prompt}", "SD_PROMPTS=template")
    assert (tmp_path / "stamps" / "sd").stat().st_mtime_ns == before  # the same settings leave the stamp alone


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_continues_fresh_leftovers_and_discards_stale_ones(tmp_path):
    """After an interruption make resumes; after a settings change it first removes the old run's leftovers."""
    import os
    import time

    def make(*variables):
        out = subprocess.run(
            [
                "make",
                "-f",
                str(ROOT / "Makefile"),
                "data/real.h5",
                "models/inv/cat.safetensors",
                "SK=true",
                "STAMPS=stamps",
                "VENV=venv",
                *variables,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr

    partial, state = tmp_path / "data" / "real.h5.partial", tmp_path / "models" / "inv" / "cat.invert-state"
    make("PER_CLASS=7")  # writes the stamps (the commands themselves are `true` here)
    for leftover in (partial, state):
        leftover.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"interrupted")
    state.mkdir()
    os.utime(tmp_path / "stamps" / "data", (time.time() - 100,) * 2)
    os.utime(tmp_path / "stamps" / "invert", (time.time() - 100,) * 2)
    make("PER_CLASS=7")  # the same settings: an interrupted run is continued
    assert partial.exists() and state.exists()
    make("PER_CLASS=8", "UPDATES=5")  # other settings: the leftovers are stale
    assert not partial.exists() and not state.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_geometry_plan(tmp_path):
    scenes = tmp_path / "my scenes"
    scenes.mkdir()
    out = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "geometry",
            "STAMPS=stamps",
            "VENV=venv",
            f"SCENES={scenes}",
            "GEO_SIZE=128",
            "GEO_CLASS=",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    plan = out.stdout
    for step in (
        f"data folder --source '{scenes}' --size 128",
        "invert --class all --data data/scenes.h5",
        "sample --embeddings models/inv-scenes/all.safetensors",
        "--classes data/scenes.h5",
        "vanish --data data/scenes.h5 --data data/scenes-inv.h5 --data data/scenes-sd.h5 --sources data/scenes.h5",
    ):
        assert step in plan, step
    assert "--class-name" not in plan  # GEO_CLASS empty: classes from the folder names
    default = subprocess.run(
        ["make", "-n", "-f", str(ROOT / "Makefile"), "geometry", "STAMPS=stamps2", "VENV=venv", f"SCENES={scenes}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert "--class-name 'urban scene' " in default and "--size 256" in default
