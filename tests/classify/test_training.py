import json
import math
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

from synthkit.classify.evaluation import predict
from synthkit.classify.model import load_classifier
from synthkit.classify.training import TrainConfig, check_config, load_stores, make_schedule, step_rows, train
from synthkit.core.device import pick_device
from synthkit.core.errors import UserError
from synthkit.core.meta import provenance
from synthkit.core.paths import train_log_path as log_path
from synthkit.core.paths import train_state_path as state_path
from synthkit.io.checkpoint import load_checkpoint, read_meta, save_checkpoint
from synthkit.io.store import Store, StoreWriter

from conftest import copy_store_as, run, usage_error

CPU = torch.device("cpu")


def quick(**overrides) -> TrainConfig:
    """The CPU recipe with a one-step warm-up, for runs of a few steps."""
    return TrainConfig.from_recipe("quick", **({"warmup_steps": 1} | overrides))


def train_cli(data, out, *options):
    """`synthkit train` on the CPU under the quick recipe, with `options` (flag, value, ...) on top."""
    return run("train", "--data", data, "--out", out, "--recipe", "quick", "--device", "cpu", *options)


def test_a_few_steps_lower_the_loss(tmp_path, real_store, monkeypatch):
    import synthkit.classify.training as training

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 4)  # a log line (and a saved state) every 4 steps
    out = tmp_path / "m.safetensors"
    train([real_store], out, quick(steps=16, batch_size=30, lr=0.02), device="cpu")
    log = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert [row["step"] for row in log] == [4, 8, 12, 16] and log[-1]["loss"] < log[0]["loss"]
    meta = read_meta(out)
    assert meta["steps"] == 16 and meta["images_seen"] == 480 and meta["batch"] == {"any": 30}


def test_overfits_twenty_images(tmp_path, real_store):
    out = tmp_path / "m.safetensors"
    train([real_store], out, quick(steps=40, batch_size=20, lr=0.05, per_class=2, seed=1, warmup_steps=4), device="cpu")
    model, meta = load_classifier(out, CPU)
    data = load_stores([real_store], CPU, per_class=2, seed=1)
    assert len(data) == 20
    preds = predict(model, data.images, CPU)
    assert (preds == data.labels).float().mean() >= 0.9
    assert meta["final_train_acc"] > 0.5


# The official evaluation's command (di README.md:68-78) and the flags synthkit's `di` recipe reads from it.
OFFICIAL_COMMAND = "--arch=resnet18 --num-steps=50000 --syn-bs=128 --optimizer=sgd --lr=1e-1 --weight-decay=5e-4 "
OFFICIAL_COMMAND += "--warmup-steps=1000 --num-evals=20"
OFFICIAL_FLAGS = {
    "arch": "arch", "num-steps": "steps", "syn-bs": "batch_size", "optimizer": "optimizer", "lr": "lr",
    "weight-decay": "weight_decay", "warmup-steps": "warmup_steps", "num-evals": "evals",
}  # fmt: skip


def test_recipes_resolve_and_every_option_overrides_its_value(tmp_path, real_store):
    di = TrainConfig.from_recipe("di")
    for flag in OFFICIAL_COMMAND.split():
        name, value = flag.removeprefix("--").split("=")
        assert str(getattr(di, OFFICIAL_FLAGS[name])) == value or getattr(di, OFFICIAL_FLAGS[name]) == float(value)
    assert (di.real_share, di.momentum, di.schedule, di.warmup_start, di.min_lr, di.augment) == (
        64,
        0.9,
        "warmup-cosine",
        0.001,
        0.001,
        "crop-flip",
    )  # train_net.py's defaults: half of each mixed batch real, momentum, ChainedScheduler, RandomCrop and flip
    assert TrainConfig() == di  # the library's default is the official evaluation
    study = TrainConfig.from_recipe("study")
    assert (study.optimizer, study.lr, study.batch_size, study.label_smoothing, study.image_size, study.schedule) == (
        "adam",
        1e-3,
        32,
        0.1,
        224,
        "step",
    )
    assert TrainConfig.from_recipe("quick", lr=0.5, steps=None).lr == 0.5  # None keeps the recipe's value
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        TrainConfig.from_recipe("nope")
    out = tmp_path / "m.safetensors"
    result = train_cli(real_store, out, "--steps", 3, "--lr", 0.05, "--batch-size", 10, "--step-every", 2)
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    resolved = asdict(TrainConfig.from_recipe("quick", steps=3, lr=0.05, batch_size=10, step_every=2, evals=0))
    assert meta["recipe"] == "quick" and meta["params"] == resolved  # the recipe's name and every resolved value
    assert "recipe quick, 3 steps of 10 from all stores" in result.output
    bad = run("train", "--data", real_store, "--out", out, "--recipe", "fast", "--overwrite")
    usage_error(bad, "--recipe", "'di'", "'study'", "'quick'")


def test_every_recipe_names_every_value_and_the_tables_refuse_unknown_names(monkeypatch):
    """TrainConfig() is read from RECIPES[DEFAULT_RECIPE]; a recipe that leaves a value out (to be filled in silently
    from another) is refused; optimisers and schedules are tables whose names are the CLI's choices."""
    from synthkit.classify.training import OPTIMIZER_TABLE, SCHEDULE_TABLE, make_optimizer
    from synthkit.core import config

    for name, recipe in config.RECIPES.items():
        assert set(recipe) == config.recipe_fields(), name
        assert asdict(TrainConfig.from_recipe(name, steps=recipe["steps"])).items() >= recipe.items()
    assert {k: v for k, v in asdict(TrainConfig()).items() if k in config.recipe_fields()} == config.RECIPES["di"]
    assert {r["optimizer"] for r in config.RECIPES.values()} <= set(OPTIMIZER_TABLE)
    assert {r["schedule"] for r in config.RECIPES.values()} <= set(SCHEDULE_TABLE)
    parameters = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(UserError, match="--optimizer must be one of sgd, adam, got 'rmsprop'"):
        make_optimizer(parameters, TrainConfig(optimizer="rmsprop"))
    with pytest.raises(UserError, match="--schedule must be one of warmup-cosine, step, got 'cosine'"):
        make_schedule(torch.optim.SGD(parameters, lr=0.1), TrainConfig(schedule="cosine"))
    with pytest.raises(UserError, match="--optimizer must be one of"):
        check_config(TrainConfig(optimizer="rmsprop"))
    partial = {k: v for k, v in config.RECIPES["study"].items() if k != "warmup_steps"}
    monkeypatch.setitem(config.RECIPES, "partial", partial)
    with pytest.raises(UserError, match=r"recipe 'partial' must name every value.*missing \['warmup_steps'\]"):
        TrainConfig.from_recipe("partial")


def test_a_classifier_recorded_before_arch_existed_is_kept_by_resume(tmp_path, real_store):
    """Older classifiers record no architecture (all were ResNet-18s): --resume keeps them as made the same way."""
    out = tmp_path / "m.safetensors"
    config = quick(steps=2, batch_size=10)
    train([real_store], out, config, device="cpu")
    tensors, meta = load_checkpoint(out)
    old_params = {k: v for k, v in meta["params"].items() if k != "arch"}
    save_checkpoint(out, tensors, meta | {"params": old_params})
    before = out.stat().st_mtime_ns
    assert train([real_store], out, config, device="cpu", resume=True)["params"] == old_params
    assert out.stat().st_mtime_ns == before  # kept, not trained again
    with pytest.raises(UserError, match="was made with arch resnet18, not mobilenet_v3_small: pass --overwrite"):
        train([real_store], out, quick(steps=2, batch_size=10, arch="mobilenet_v3_small"), device="cpu", resume=True)


def test_show_prints_the_resolved_recipe_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = run("train", "--recipe", "quick", "--show")
    assert shown.exit_code == 0, shown.output
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    assert rows["steps"] == ["300", "recipe"] and rows["lr"] == ["0.025", "recipe"] and rows["warmup_steps"][0] == "15"
    assert len(rows) == len(asdict(TrainConfig())) - 2 and not list(tmp_path.iterdir())  # all but recipe and seed
    given = run("train", "--recipe", "quick", "--steps", 40, "--lr", 0.05, "--show")
    assert "lr              0.05                option" in given.stdout
    assert "warmup_steps    2                   recipe's 15, scaled to 40 steps" in given.stdout
    missing = run("train", "--recipe", "quick")
    assert missing.exit_code == 2 and "Error: Missing option '--data'." in missing.stderr


def test_a_shorter_run_scales_the_recipes_warm_up_and_a_longer_warm_up_is_refused(tmp_path, real_store):
    assert TrainConfig.from_recipe("quick", steps=3).warmup_steps == 0  # 15 of 300 steps is 5%: none of 3
    assert TrainConfig.from_recipe("quick", steps=100).warmup_steps == 5
    assert TrainConfig.from_recipe("di", steps=60_000).warmup_steps == 1000  # a longer run keeps the recipe's
    assert TrainConfig.from_recipe("quick", steps=100, warmup_steps=30).warmup_steps == 30
    with pytest.raises(UserError, match="--warmup-steps 5 is not shorter than --steps 3"):
        check_config(TrainConfig.from_recipe("quick", steps=3, warmup_steps=5))
    bad = train_cli(real_store, tmp_path / "m.safetensors", "--steps", 3, "--warmup-steps", 3)
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --warmup-steps 3") and not list(tmp_path.iterdir())


def test_without_warm_up_the_first_step_takes_the_full_learning_rate():
    """torch's LinearLR over 0 steps would hold its start factor (a thousandth of lr) for the whole run."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    schedule = make_schedule(optimizer, TrainConfig.from_recipe("quick", steps=10, warmup_steps=0, lr=0.1))
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[2] == pytest.approx(
        0.1 * (0.999 * (1 + math.cos(0.2 * math.pi)) / 2 + 0.001)
    )


def test_every_row_trains_the_same_steps_whatever_its_stores_size(tmp_path, real_store):
    """A store of 120 images and one of 20 train the same 6 steps at the same batch, so see the same number of
    images: counted as each step drew them, not computed from the configuration."""
    small = tmp_path / "small.h5"
    with (
        Store(real_store) as s,
        StoreWriter(small, classes=s.classes, image_shape=(32, 32), meta=provenance("inv", {}), total=20) as w,
    ):
        w.append(s.images(np.arange(20)), s.labels[:20])
    metas = [
        train([store], tmp_path / f"{store.stem}.safetensors", quick(steps=6, batch_size=16), device="cpu")
        for store in (real_store, small)
    ]
    assert [m["steps"] for m in metas] == [6, 6] and [m["images_seen"] for m in metas] == [96, 96]
    assert [m["sources"][0]["count"] for m in metas] == [120, 20]


def test_the_schedule_is_torchs_chained_linear_warmup_and_cosine(tmp_path, real_store, monkeypatch):
    """The learning rate of every step of a short run equals torch's own ChainedScheduler(LinearLR, CosineAnnealingLR)
    with the official settings (start factor 0.001, eta_min 0.001 lr, T_max the steps), stepped once per step."""
    import synthkit.classify.training as training

    used = []
    original = training.make_optimizer

    def recording(parameters, config):
        optimizer = original(parameters, config)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", recording)
    config = TrainConfig.from_recipe("di", steps=30, warmup_steps=8, batch_size=4, lr=0.2)
    train([real_store], tmp_path / "m.safetensors", config, device="cpu")
    weight = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.SGD([weight], lr=0.2, momentum=0.9)
    schedule = torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.LinearLR(reference, start_factor=0.001, total_iters=8),
            torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=30, eta_min=0.2 * 0.001),
        ]
    )
    expected = []
    for _ in range(30):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    assert used == expected  # exactly, step by step
    assert used[0] == pytest.approx(0.2 * 0.001) and int(np.argmax(used)) == 8  # warm-up, then decay


def test_mixed_rows_take_real_and_synthetic_images_every_step(tmp_path, real_store, monkeypatch):
    """Each batch of a mixed row holds real_batch real images and the rest synthetic, at every step; a single-source
    row takes the whole batch from its store. Counted on the rows the training loop reads, by store."""
    import synthkit.classify.training as training

    synthetic = tmp_path / "inv.h5"
    with (
        Store(real_store) as s,
        StoreWriter(synthetic, classes=s.classes, image_shape=(32, 32), meta=provenance("inv", {}), total=50) as w,
    ):
        w.append(s.images(np.arange(50)), s.labels[:50])
    seen = []
    original = training.batch_images
    monkeypatch.setattr(
        training,
        "batch_images",
        lambda data, batches, device: seen.extend(rows.tolist() for rows in batches) or original(data, batches, device),
    )
    train(
        [real_store, synthetic],
        tmp_path / "mixed.safetensors",
        quick(steps=7, batch_size=20, real_batch=12),
        device="cpu",
    )
    assert len(seen) == 7
    for rows in seen:  # rows 0-119 come from the real store, 120-169 from the synthetic one
        assert sum(r < 120 for r in rows) == 12 and sum(r >= 120 for r in rows) == 8 and len(rows) == 20
    assert read_meta(tmp_path / "mixed.safetensors")["batch"] == {"real": 12, "synthetic": 8}
    seen.clear()
    train([synthetic], tmp_path / "one.safetensors", quick(steps=3, batch_size=20, real_batch=12), device="cpu")
    assert [len(rows) for rows in seen] == [20, 20, 20] and read_meta(tmp_path / "one.safetensors")["batch"] == {
        "any": 20
    }
    # each part is an endless stream of shuffled passes: the 50 synthetic rows are all seen in the first 7 steps (56
    # rows)
    data = load_stores([real_store, synthetic], CPU)
    rows = step_rows(data, quick(batch_size=20, real_batch=12), 0, 7)
    assert set(rows[:, 12:].flatten().tolist()) == set(range(120, 170))
    assert torch.equal(step_rows(data, quick(batch_size=20, real_batch=12), 3, 7), rows[3:])  # any stretch on its own


def test_training_scores_the_test_store_by_default_or_says_it_scores_nothing(
    tmp_path, monkeypatch, real_store, test_store
):
    """Without --test, train scores data/test.h5 as evaluate does; without that store it says so in one line and
    records evals 0."""
    monkeypatch.chdir(tmp_path)
    options = ("--steps", 4, "--batch-size", 20, "--warmup-steps", 1, "--evals", 2)
    alone = train_cli(real_store, "alone.safetensors", *options)
    assert alone.exit_code == 0, alone.output
    assert alone.stderr.splitlines() == [
        "note: --evals 2 is not used: no --test store to score",
        "no test store given (--test): nothing is scored during training, evals 0",
    ]
    assert "test accuracy" not in alone.stdout
    meta = read_meta(tmp_path / "alone.safetensors")
    assert meta["params"]["evals"] == 0 and "evals" not in meta  # no test store: none made, none recorded
    (tmp_path / "data").mkdir()
    shutil.copy(test_store, "data/test.h5")
    scored = train_cli(real_store, "scored.safetensors", *options)
    assert scored.exit_code == 0, scored.output
    assert "no test store given" not in scored.output and "test accuracy" in scored.output
    meta = read_meta(tmp_path / "scored.safetensors")
    assert [e["step"] for e in meta["evals"]] == [2, 4] and meta["test"]["path"] == "data/test.h5"


def test_evaluations_during_training_are_logged_and_the_last_is_the_final_accuracy(tmp_path, real_store, test_store):
    out = tmp_path / "m.safetensors"
    result = train_cli(
        real_store, out, "--steps", 6, "--batch-size", 20, "--warmup-steps", 1, "--evals", 3, "--test", test_store
    )
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert [(row["step"], "test_acc" in row) for row in log] == [(2, True), (4, True), (6, True)]
    meta = read_meta(out)
    assert [e["step"] for e in meta["evals"]] == [2, 4, 6] and meta["final_test_acc"] == log[-1]["test_acc"]
    assert meta["best_test_acc"] == max(row["test_acc"] for row in log)
    result = run("evaluate", "--model", out, "--test", test_store, "--results", tmp_path / "r", "--device", "cpu")
    assert result.exit_code == 0, result.output
    import csv

    (row,) = csv.DictReader(open(tmp_path / "r" / "accuracy.csv"))
    assert float(row["accuracy"]) == pytest.approx(meta["final_test_acc"], abs=1e-5)  # scored the same way twice
    assert float(row["best_eval_accuracy"]) == meta["best_test_acc"] and len(json.loads(row["evals"])) == 3
    other = tmp_path / "other.h5"
    copy_store_as(test_store, other, "real", classes=[f"c{i}" for i in range(10)])
    bad = run("train", "--data", real_store, "--out", tmp_path / "x.safetensors", "--recipe", "quick", "--test", other)
    assert bad.exit_code == 2 and "test store" in bad.stderr and not (tmp_path / "x.safetensors").exists()


def test_seeds_train_in_one_job_and_are_grouped_into_mean_and_spread(tmp_path, real_store, test_store):
    out = tmp_path / "models" / "resnet18-{data}-s{seed}.safetensors"
    result = train_cli(real_store, out, "--steps", 2, "--batch-size", 10, "--seed", 0, "--seed", 1, "--seed", 2)
    assert result.exit_code == 0, result.output
    models = [tmp_path / "models" / f"resnet18-real-s{k}.safetensors" for k in range(3)]
    assert all(m.exists() for m in models) and [read_meta(m)["params"]["seed"] for m in models] == [0, 1, 2]
    result = run(
        "evaluate", *(x for m in models for x in ("--model", m)), "--test", test_store, "--results", tmp_path / "r"
    )
    assert result.exit_code == 0, result.output
    import csv

    accuracy = [100 * float(r["accuracy"]) for r in csv.DictReader(open(tmp_path / "r" / "accuracy.csv"))]
    table = (tmp_path / "r" / "accuracy.md").read_text()
    assert (
        f"| real | {np.mean(accuracy):.2f} ± {np.std(accuracy, ddof=1):.2f} | 3 |" in table and "| 0, 1, 2 |" in table
    )
    bad = run("train", "--data", real_store, "--out", tmp_path / "one.safetensors", "--seed", 0, "--seed", 1)
    assert bad.exit_code == 2 and "put {data} and {seed} in it" in bad.stderr


def test_balanced_needs_both_kinds(tmp_path, real_store):
    data = load_stores([real_store], CPU, per_class=1)
    with pytest.raises(UserError, match="balanced needs"):
        step_rows(data, quick(mix="balanced"), 0, 1)


def test_resume_after_an_interrupted_run_gives_the_same_weights(tmp_path, real_store, monkeypatch):
    config = quick(steps=9, batch_size=20, lr=0.05, per_class=2, seed=3)
    ref = tmp_path / "ref.safetensors"
    train([real_store], ref, config, device="cpu")
    import synthkit.classify.training as training

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 3)  # states saved after steps 3 and 6
    calls = {"n": 0}
    original = training.training_batch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # step 5, after the state of step 3
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "training_batch", interrupted)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train([real_store], out, config, device="cpu")
    assert not out.exists() and state_path(out).exists()
    state = read_meta(state_path(out))  # the optimiser's and the schedule's state_dict, saved whole: nothing replayed
    assert state["step"] == 3 and state["images_seen"] == 60
    assert [s["last_epoch"] for s in state["schedule"]["_schedulers"]] == [3, 3]
    assert state["optimizer"][0]["lr"] == pytest.approx(state["schedule"]["_last_lr"][0])
    monkeypatch.setattr(training, "training_batch", original)
    result = train_cli(
        real_store,
        out,
        "--steps",
        9,
        "--batch-size",
        20,
        "--lr",
        0.05,
        "--per-class",
        2,
        "--seed",
        3,
        "--warmup-steps",
        1,
        "--resume",
    )
    assert result.exit_code == 0, result.output
    a, _ = load_classifier(out, CPU)
    b, _ = load_classifier(ref, CPU)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not state_path(out).exists()
    assert [json.loads(line)["step"] for line in log_path(out).read_text().splitlines()] == [3, 6, 9]


def three_jobs(tmp_path, real_store, folder: str) -> list:
    """Three classifiers of different stores (120, 60 and 180 images) and seeds."""
    from synthkit.classify.training import TrainJob

    half = tmp_path / "half.h5"
    if not half.exists():
        with (
            Store(real_store) as s,
            StoreWriter(half, classes=s.classes, image_shape=(32, 32), meta=provenance("inv", {}), total=60) as w,
        ):
            w.append(s.images(np.arange(0, 120, 2)), s.labels[0::2])
    stores = [[real_store], [half], [real_store, half]]
    return [
        TrainJob(data, tmp_path / folder / f"m{k}.safetensors", quick(steps=4, batch_size=10, seed=k))
        for k, data in enumerate(stores)
    ]


def same_weights(a, b) -> bool:
    x, _ = load_classifier(a, CPU)
    y, _ = load_classifier(b, CPU)
    return all(
        torch.allclose(p, q, atol=1e-6, rtol=0) for p, q in zip(x.state_dict().values(), y.state_dict().values())
    )


def test_classifiers_trained_in_one_job_equal_each_trained_alone_even_after_a_kill(tmp_path, real_store, monkeypatch):
    import synthkit.classify.training as training
    from synthkit.classify.training import train_many

    alone = three_jobs(tmp_path, real_store, "alone")
    for job in alone:
        train(job.data, job.out, job.config, device="cpu")
    together = three_jobs(tmp_path, real_store, "together")
    metas = train_many(together, device="cpu")
    assert [m["params"]["seed"] for m in metas] == [0, 1, 2] and [m["sources"][0]["count"] for m in metas] == [
        120,
        60,
        120,
    ]
    assert all(same_weights(a.out, b.out) for a, b in zip(alone, together))

    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 2)
    calls = {"n": 0}
    original = training.training_batch

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # the third round of steps: each classifier has saved its state after step 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "training_batch", killed)
    resumed = three_jobs(tmp_path, real_store, "resumed")
    with pytest.raises(KeyboardInterrupt):
        train_many(resumed, device="cpu")
    assert not any(job.out.exists() for job in resumed) and all(state_path(job.out).exists() for job in resumed)
    monkeypatch.setattr(training, "training_batch", original)
    train_many(resumed, device="cpu", resume=True)
    assert all(same_weights(a.out, b.out) for a, b in zip(alone, resumed))
    assert not any(state_path(job.out).exists() for job in resumed)


def test_a_diverging_classifier_stops_alone_and_the_others_finish(tmp_path, real_store):
    from dataclasses import replace

    from synthkit.classify.training import TrainingDiverged, train_many

    jobs = three_jobs(tmp_path, real_store, "fleet")
    jobs[1].config = replace(jobs[1].config, lr=1e30)
    with pytest.raises(TrainingDiverged, match="half \\(seed 1\\): the loss became") as err:
        train_many(jobs, device="cpu")
    assert jobs[0].out.exists() and jobs[2].out.exists() and not jobs[1].out.exists()
    assert f"finished: {jobs[0].out}, {jobs[2].out}" in str(err.value)


def test_shards_split_the_classifiers_of_a_job(tmp_path, real_store, monkeypatch):
    out = tmp_path / "m-{data}-s{seed}.safetensors"
    args = [
        "train",
        "--data",
        real_store,
        "--out",
        out,
        "--recipe",
        "quick",
        "--steps",
        1,
        "--batch-size",
        4,
        "--seed",
        0,
        "--seed",
        1,
        "--seed",
        2,
        "--device",
        "cpu",
    ]
    result = run(*args, "--shard", "1/2")
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in tmp_path.glob("m-*.safetensors"))
    assert (
        made == ["m-real-s1.safetensors", "m-real-s2.safetensors"]
        and "shard 1/2: trained classifiers 2-3 of 3" in result.output
    )
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    result = run(*args, "--shard", "auto")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("m-*.safetensors")) == [f"m-real-s{k}.safetensors" for k in range(3)]
    bad = run(*args, "--shard", "3/2")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --shard 3/2") and bad.stdout == ""


def test_checkpoint_metadata_round_trips(tiny_classifier, real_store):
    meta = read_meta(tiny_classifier)
    assert meta["kind"] == "classifier" and (meta["arch"], meta["stem"]) == ("resnet18", "cifar")
    assert meta["classes"][0] == "airplane" and len(meta["classes"]) == 10
    with Store(real_store) as s:
        assert meta["sources"] == [
            {
                "path": str(real_store),
                "kind": "real",
                "count": 120,
                "fingerprint": s.fingerprint,
                "image_size": 32,
                "real_images": 120,
            }
        ]
    assert (
        meta["params"]["lr"] == 0.05
        and meta["params"]["seed"] == 0
        and meta["steps"] == 6
        and meta["recipe"] == "quick"
    )
    assert meta["versions"]["torch"] and meta["seconds"] >= 0 and np.isfinite(meta["final_loss"])


def test_stores_of_other_sizes_are_resized_and_classes_matched_by_name(tmp_path, real_store):
    from synthkit.core.meta import provenance
    from synthkit.io.store import StoreWriter

    with Store(real_store) as s:
        classes = list(reversed(s.classes))
        big = np.repeat(np.repeat(s.images(slice(0, 4)), 2, axis=1), 2, axis=2)
        labels = 9 - s.labels[:4]
    with StoreWriter(
        tmp_path / "big.h5", classes=classes, image_shape=(64, 64), meta=provenance("sd", {}), total=4
    ) as w:
        w.append(big, labels)
    data = load_stores([real_store, tmp_path / "big.h5"], CPU)
    assert data.images.shape == (124, 3, 32, 32)
    with Store(real_store) as s:
        assert torch.equal(data.labels[120:], torch.from_numpy(s.labels[:4]))
        diff = (
            (data.images[120:].float() - torch.from_numpy(s.images(slice(0, 4))).permute(0, 3, 1, 2).float())
            .abs()
            .mean()
        )
    assert diff < 8  # antialiased resizing blurs a little; a wrong image or label order differs by ~50


def test_nan_loss_stops_with_a_clear_message(tmp_path, real_store):
    out = tmp_path / "m.safetensors"
    result = train_cli(real_store, out, "--steps", 5, "--batch-size", 40, "--lr", 1e30, "--per-class", 4)
    assert result.exit_code == 2, result.output
    assert "loss became" in result.stderr and "lower --lr" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "classes", "not_store", "not_classifier", "balanced_without_synthetic"])
def test_bad_input_one_line_exit_2(tmp_path, real_store, case):
    out = tmp_path / "m.safetensors"
    if case == "missing":
        args = ["train", "--data", tmp_path / "nope.h5", "--out", out]
    elif case == "classes":
        other = copy_store_as(real_store, tmp_path / "other.h5", "sd", classes=[f"c{i}" for i in range(10)])
        args = ["train", "--data", f"{real_store},{other}", "--out", out]
    elif case == "not_store":
        (tmp_path / "x.h5").write_text("text")
        args = ["train", "--data", tmp_path / "x.h5", "--out", out]
    elif case == "balanced_without_synthetic":
        args = ["train", "--data", real_store, "--mix", "balanced", "--out", out]
    else:
        save_checkpoint(tmp_path / "emb.safetensors", {"e": torch.zeros(2)}, {"kind": "embeddings"})
        args = ["evaluate", "--model", tmp_path / "emb.safetensors", "--test", real_store]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_matches_a_hand_count(tmp_path, tiny_classifier, test_store):
    results = tmp_path / "results"
    result = run(
        "evaluate",
        "--model",
        tiny_classifier,
        "--test",
        test_store,
        "--results",
        results,
        "--device",
        "cpu",
        "--batch-size",
        7,
    )
    assert result.exit_code == 0, result.output
    model, _ = load_classifier(tiny_classifier, CPU)
    with Store(test_store) as s:
        correct = 0
        for image, label in zip(s.images(), s.labels):
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                correct += int(model(x).argmax(1).item() == label)
    import csv

    rows = list(csv.DictReader(open(results / "accuracy.csv")))
    assert len(rows) == 1 and rows[0]["training_data"] == "real"
    assert float(rows[0]["accuracy"]) == pytest.approx(correct / 60)
    per_class = json.loads(rows[0]["per_class"])
    assert np.mean(list(per_class.values())) == pytest.approx(correct / 60)
    assert (results / "confusion" / f"{tiny_classifier.stem}.png").exists()
    assert f"{100 * correct / 60:.2f}" in (results / "accuracy.md").read_text()
    run("evaluate", "--model", tiny_classifier, "--test", test_store, "--results", results, "--device", "cpu")
    assert len(list(csv.DictReader(open(results / "accuracy.csv")))) == 1  # evaluated again: its row replaced
    assert (results / "accuracy.md").read_text().count("| real |") == 1


def test_evaluate_refuses_a_synthetic_test_store(tmp_path, tiny_classifier, test_store):
    fake = copy_store_as(test_store, tmp_path / "sdtest.h5", "sd")
    result = run("evaluate", "--model", tiny_classifier, "--test", fake, "--results", tmp_path)
    assert result.exit_code == 2 and "real test images only" in result.stderr


def test_device_choice(monkeypatch):
    monkeypatch.delenv("SYNTHKIT_DEVICE", raising=False)
    assert pick_device("cpu").type == "cpu"
    for cuda, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert pick_device("auto").type == expected and pick_device(None).type == expected
        assert pick_device("AUTO").type == expected
    # without CUDA: asking for it is a UserError, and $SYNTHKIT_DEVICE sets the default
    with pytest.raises(UserError, match="no CUDA"):
        pick_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu0")
    monkeypatch.setenv("SYNTHKIT_DEVICE", "cuda")
    with pytest.raises(UserError, match="no CUDA"):
        pick_device(None)
    monkeypatch.setenv("SYNTHKIT_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None).type == "cpu" and pick_device("auto").type == "cuda"


@pytest.mark.parametrize("size,stem", [(40, "cifar"), (72, "imagenet")])
def test_any_size_and_classes_train_evaluate_and_gradcam(tmp_path, real_store, test_store, size, stem):
    """A 3-class store at 40 or 72 px: the stem follows the size, the checkpoint records it, and evaluate, gradcam,
    filter and fidelity feed the model at its own size."""
    from conftest import cut_store

    train_store, test = (
        cut_store(real_store, tmp_path / "mine.h5", size),
        cut_store(test_store, tmp_path / "mine-test.h5", size),
    )
    out = tmp_path / "m.safetensors"
    result = run("train", "--data", train_store, "--out", out, "--recipe", "quick", "--steps", 4, "--batch-size", 12)
    assert result.exit_code == 0, result.output
    assert f"resnet18 ({stem} stem) at {size} px" in result.output
    meta = read_meta(out)
    assert (
        (meta["arch"], meta["stem"]) == ("resnet18", stem)
        and meta["image_size"] == size
        and meta["classes"] == ["airplane", "cat", "ship"]
    )
    model, _ = load_classifier(out, CPU)
    assert (model.net.maxpool.__class__.__name__ == "MaxPool2d") == (size > 64) and model.image_size == size
    assert model(torch.rand(2, 3, size, size)).shape == (2, 3)
    result = run("evaluate", "--model", out, "--test", test, "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    import csv

    with open(tmp_path / "results" / "accuracy.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["test_images"] == "18" and set(json.loads(row["per_class"])) == {"airplane", "cat", "ship"}
    assert (tmp_path / "results" / "confusion" / "m.png").exists()
    others = [tiny_classifier_at(tmp_path, real_store)] if size > 64 else []  # models of two input sizes compared
    result = run(
        "gradcam",
        "--model",
        out,
        *(x for o in others for x in ("--model", o)),
        "--data",
        test,
        "--n",
        6,
        "--out",
        tmp_path / "cam",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cam" / "summary.json").read_text())
    assert len(summary["models"]) == 1 + len(others) and (summary["agreement"] or not others)
    result = run(
        "filter",
        "--data",
        test,
        "--classifier",
        out,
        "--by",
        "cam",
        "--real",
        train_store,
        "--keep",
        0.5,
        "--out",
        tmp_path / "kept.h5",
    )
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "kept.h5") as kept:
        assert list(kept.counts()) == [3, 3, 3]
    result = run(
        "fidelity",
        "--real",
        train_store,
        "--data",
        test,
        "--classifier",
        out,
        "--per-class",
        6,
        "--out",
        tmp_path / "fid",
    )
    assert result.exit_code == 0, result.output


def tiny_classifier_at(tmp_path, real_store, size: int = 32):
    """A 3-class classifier at another size, so that gradcam compares models of different input sizes."""
    from conftest import cut_store

    out = tmp_path / f"other-{size}.safetensors"
    train(
        [cut_store(real_store, tmp_path / f"other-{size}.h5", size)], out, quick(steps=2, batch_size=12), device="cpu"
    )
    return out


def test_training_stores_must_agree_on_classes_by_name(tmp_path, real_store):
    from conftest import cut_store

    mine = cut_store(real_store, tmp_path / "mine.h5", 32)
    other = cut_store(real_store, tmp_path / "other.h5", 32, classes=("airplane", "cat", "dog"))
    reordered = cut_store(real_store, tmp_path / "reordered.h5", 32, classes=("ship", "airplane", "cat"))
    result = run(
        "train", "--data", f"{mine},{other}", "--out", tmp_path / "m.safetensors", "--recipe", "quick", "--steps", 1
    )
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert (
        f"store {other} has classes airplane, cat, dog" in result.stderr and not (tmp_path / "m.safetensors").exists()
    )
    data = load_stores([mine, reordered], CPU)
    with Store(mine) as a, Store(reordered) as b:
        assert torch.equal(data.labels, torch.from_numpy(np.concatenate([a.labels, [[2, 0, 1][c] for c in b.labels]])))


def test_a_set_over_the_memory_limit_streams_and_trains_the_same_weights(tmp_path, real_store, monkeypatch):
    """Two stores (120 real and 60 synthetic images, mixed half and half per batch, so rows repeat) trained at 40 px
    take 864 KiB: under a 300 KB limit they are read from the stores a window of batches at a time, and the weights
    equal those of the run that held them all on the device."""
    with (
        Store(real_store) as s,
        StoreWriter(
            tmp_path / "half.h5", classes=s.classes, image_shape=(32, 32), meta=provenance("sd", {}), total=60
        ) as w,
    ):
        w.append(s.images(np.arange(0, 120, 2)), s.labels[0::2])
    stores = [real_store, tmp_path / "half.h5"]
    held, streamed = tmp_path / "held.safetensors", tmp_path / "streamed.safetensors"
    config = quick(steps=4, batch_size=24, lr=0.05, seed=3, mix="balanced", image_size=40)
    train(stores, held, config, device="cpu")
    monkeypatch.setenv("SYNTHKIT_MEMORY_LIMIT", "300KB")
    reads = []
    original = Store.images
    monkeypatch.setattr(Store, "images", lambda self, index=None: reads.append(index) or original(self, index))
    result = run(
        "train",
        "--data",
        f"{stores[0]},{stores[1]}",
        "--out",
        streamed,
        "--recipe",
        "quick",
        "--steps",
        4,
        "--batch-size",
        24,
        "--warmup-steps",
        1,
        "--lr",
        0.05,
        "--seed",
        3,
        "--mix",
        "balanced",
        "--image-size",
        40,
    )
    assert result.exit_code == 0, result.output
    assert "streaming: 180 images at 40 px" in result.output
    # 300 KB hold 64 rows at 40 px: a window is two batches of 24 (the next batch is counted before it is added),
    # so 4 steps are 2 windows, each read from both stores
    assert len(reads) == 2 * 2 and all(len(r) <= 48 for r in reads)
    assert read_meta(streamed)["streamed"] and not read_meta(held)["streamed"]
    a, _ = load_classifier(held, CPU)
    b, _ = load_classifier(streamed, CPU)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    reads.clear()
    whole = run("evaluate", "--model", held, "--test", real_store, "--results", tmp_path / "whole")
    chunked = run(
        "evaluate", "--model", held, "--test", real_store, "--results", tmp_path / "chunked", "--memory-limit", "20KB"
    )
    assert whole.exit_code == 0 and chunked.exit_code == 0, whole.output + chunked.output
    assert len(reads) > 2  # the test store is read in chunks too
    rows = [(tmp_path / r / "accuracy.csv").read_text().splitlines()[1].split(",")[9:] for r in ("whole", "chunked")]
    assert rows[0] == rows[1]  # the same accuracy and per-class accuracy
    bad = run("train", "--data", real_store, "--out", tmp_path / "x.safetensors", "--memory-limit", "lots")
    assert bad.exit_code == 2 and "memory limit 'lots' is not a size" in bad.stderr


def test_a_classifier_written_before_sizes_were_recorded_still_loads(tmp_path, tiny_classifier, test_store):
    """A classifier of an older synthkit: no size, the stem in its arch name, its head's weights under net.fc."""
    tensors, meta = load_checkpoint(tiny_classifier, CPU)
    old = tmp_path / "old.safetensors"
    save_checkpoint(
        old,
        {k.replace("head.", "net.fc.", 1) if k.startswith("head.") else k: v for k, v in tensors.items()},
        {k: v for k, v in meta.items() if k not in ("image_size", "streamed", "stem")} | {"arch": "resnet18-cifar"},
    )
    model, loaded = load_classifier(old, CPU)
    assert model.image_size == 32 and (loaded["image_size"], loaded["arch"], loaded["stem"]) == (
        32,
        "resnet18",
        "cifar",
    )
    assert torch.equal(model.head.weight, load_classifier(tiny_classifier, CPU)[0].head.weight)
    result = run(
        "evaluate", "--model", old, "--model", tiny_classifier, "--test", test_store, "--results", tmp_path / "r"
    )
    assert result.exit_code == 0, result.output


def test_confusion_figures_stay_readable_for_a_hundred_classes(tmp_path):
    from PIL import Image

    from synthkit.classify.evaluation import save_confusion_figure

    rng = np.random.default_rng(0)
    for n in (3, 100):
        counts = rng.integers(0, 5, (n, n))
        path = save_confusion_figure(counts, [f"class{i}" for i in range(n)], tmp_path / f"{n}.png", "t")
        width, height = Image.open(path).size
        assert height == 600 if n == 3 else height >= 20 * n  # 20 px a row at 100 dpi: room for its 6 pt label


# ---- issue 37: which test store a job scores. The default (data/test.h5) applies only where its classes are the
# training stores'; --test none scores nothing; --evals 0 reads no test store; a named one of other classes is refused.
@pytest.fixture
def two_class_folder(tmp_path, real_store, test_store, monkeypatch):
    """A folder whose data/test.h5 has CIFAR-10's 10 classes, and a training store of 3 of them (two.h5)."""
    from conftest import cut_store

    (tmp_path / "data").mkdir()
    shutil.copy(test_store, tmp_path / "data" / "test.h5")
    cut_store(real_store, tmp_path / "two.h5", 32)
    monkeypatch.chdir(tmp_path)
    return tmp_path


TEST_STORES = {
    "the default store of other classes": (
        ("two.h5",),
        "note: the default test store data/test.h5 has classes airplane, automobile, bird, cat, deer, dog, frog, "
        "horse, ship, truck, not airplane, cat, ship: it is not used and nothing is scored during training, evals 0",
    ),
    "--test none": (("data/test.h5", "--test", "none"), "no test store given (--test): nothing is scored"),
    "--evals 0 and the default store": (("two.h5", "--evals", 0), None),
    "--evals 0 and a named store": (
        ("two.h5", "--evals", 0, "--test", "data/test.h5"),
        "note: --test data/test.h5 is not used: evals 0 scores nothing",
    ),
}


@pytest.mark.parametrize("case", list(TEST_STORES))
def test_a_job_scores_a_test_store_only_where_it_applies(case, two_class_folder):
    (data, *options), said = TEST_STORES[case]
    result = train_cli(data, "m.safetensors", "--steps", 2, "--batch-size", 10, *options)
    assert result.exit_code == 0 and "Traceback" not in result.output, f"{case}: {result.output}"
    assert said is None or said in result.stderr, f"{case}: {result.stderr}"
    meta = read_meta(two_class_folder / "m.safetensors")
    assert meta["params"]["evals"] == 0 and "test" not in meta and "evals" not in meta, case


def test_evals_0_never_reads_the_test_store(two_class_folder):
    """A default test store that cannot be read is not opened with --evals 0 (nor a named one); with evals it is."""
    broken = two_class_folder / "data" / "test.h5"
    broken.write_bytes(b"not a store")
    before = broken.stat().st_mtime_ns
    for options in (("--evals", 0), ("--evals", 0, "--test", broken)):
        result = train_cli("two.h5", "m.safetensors", "--steps", 1, "--batch-size", 10, *options, "--overwrite")
        assert result.exit_code == 0, f"{options}: {result.output}"
    assert broken.read_bytes() == b"not a store" and broken.stat().st_mtime_ns == before
    result = train_cli("two.h5", "n.safetensors", "--steps", 1, "--batch-size", 10)
    assert result.exit_code == 2 and "data/test.h5 is not an HDF5 file" in result.stderr, result.output
    assert not (two_class_folder / "n.safetensors").exists()


def test_a_named_test_store_of_other_classes_is_still_refused(two_class_folder):
    result = train_cli("two.h5", "m.safetensors", "--steps", 1, "--test", "data/test.h5")
    message = result.stderr.strip()
    assert result.exit_code == 2 and len(message.splitlines()) == 1, result.output
    assert (
        message.startswith("error: test store data/test.h5 has classes airplane, automobile")
        and "Traceback" not in result.output
    )
    assert not (two_class_folder / "m.safetensors").exists()


def test_the_default_store_of_the_same_classes_is_scored(two_class_folder, real_store):
    result = train_cli(real_store, "m.safetensors", "--steps", 2, "--batch-size", 10, "--evals", 1)
    assert result.exit_code == 0 and "nothing is scored" not in result.output, result.output
    assert read_meta(two_class_folder / "m.safetensors")["test"]["path"] == "data/test.h5"
