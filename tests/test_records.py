"""Records say what was used (issue 37, item 5): the judge's images per class and prompt, the report's sentences
drawn from them, filter's classifier fingerprint, and the values `train --show` resolves from the data. Each case
reads one record of one run and compares it with what the run did."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SMALL, copy_store_as, run

TEMPLATE = "a blurry {class}"


def shown(*args) -> dict[str, tuple[str, str]]:
    """train --show's rows: {key: (value, where it comes from)}."""
    result = run("train", "--recipe", "quick", "--batch-size", 32, "--show", *args)
    assert result.exit_code == 0, result.output
    rows = [line.split(maxsplit=2) for line in result.stdout.splitlines()[1:]]
    return {key: (value, source) for key, value, source in rows}


@pytest.fixture(scope="module")
def made(tmp_path_factory, real_store, tiny_classifier) -> SimpleNamespace:
    """One run of each command whose record is read: judge (--per-class 20 on a store of one image per class, with
    a miniature trained on another --template), the report of its results, filter, and train --show."""
    from synthkit.analyse import judge as judge_module
    from synthkit.generate.minisd import train_mini
    from synthkit.report.results import write_report

    root = tmp_path_factory.mktemp("records")
    for folder in ("data", "models", "results"):
        (root / folder).mkdir()
    mini = root / "mini"
    train_mini(real_store, mini, replace(SMALL, template=TEMPLATE), device="cpu", say=lambda *_: None)
    assert run("subset", real_store, "--per-class", 1, "--out", root / "data" / "few.h5").exit_code == 0
    prompts: list[str] = []
    encode = judge_module.encode_text
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(judge_module, "encode_text", lambda d, texts, *a: prompts.extend(texts) or encode(d, texts, *a))
        judged = run("judge", "--data", root / "data" / "few.h5", "--model", mini, "--per-class", 20, "--device",
                     "cpu", "--out", root / "results" / "judge.json")  # fmt: skip
    assert judged.exit_code == 0, judged.output
    readme = write_report(root / "results", root / "models", root / "data").read_text()
    inv = copy_store_as(real_store, root / "data" / "inv.h5", "inv")
    shutil.copy(tiny_classifier, root / "models" / "copy.safetensors")
    kept = root / "data" / "kept.h5"
    filtered = run("filter", "--data", inv, "--classifier", tiny_classifier, "--out", kept, "--device", "cpu")
    assert filtered.exit_code == 0, filtered.output
    from synthkit.io.store import Store

    with Store(kept) as store:
        filter_sources = store.meta["sources"]
    return SimpleNamespace(
        judge=json.loads((root / "results" / "judge.json").read_text()),
        prompts=prompts,
        readme=readme,
        filter_sources=filter_sources,
        copy=root / "models" / "copy.safetensors",
        alone=shown(),
        real=shown("--data", real_store),
        mixed=shown("--data", real_store, "--data", f"{real_store},{inv}"),
    )


def fingerprint(path: Path) -> str:
    from synthkit.io.checkpoint import weights_fingerprint

    return weights_fingerprint(path)


# case: (what the record says, read from the runs; what was used)
RECORDS = {
    "judge: the images it took of each class, not the 20 asked": (lambda m: m.judge["rows"][0]["per_class"], [1] * 10),
    "judge: the 20 asked, under its own name": (
        lambda m: (m.judge["per_class_asked"], "per_class" in m.judge),
        (20, False),
    ),
    "judge: the prompt the model was trained with": (lambda m: m.judge["template"], TEMPLATE),
    "judge: the prompts it asked with": (lambda m: m.prompts[:2], ["a blurry airplane", "a blurry automobile"]),
    "report: the images per class the judge took": (
        lambda m: ("1 image per class of each store" in m.readme, "20 images" in m.readme),
        (True, False),
    ),
    "report: the prompt the judge asked with": (lambda m: f"each class asked as `{TEMPLATE}`" in m.readme, True),
    "report: no Samples heading without grids": (lambda m: "## Samples" in m.readme, False),
    "filter: its classifier's fingerprint, that of its weights": (
        lambda m: m.filter_sources[1]["fingerprint"],
        lambda m: fingerprint(m.copy),
    ),
    "train --show: image_size from the first store": (lambda m: m.real["image_size"][0], "32"),
    "train --show: real_batch unused where no row mixes": (lambda m: m.real["real_batch"][0], "unused"),
    "train --show: real_batch half the batch in the mixed row": (
        lambda m: (m.mixed["real_batch"][0], "in real+inv " in m.mixed["real_batch"][1]),
        ("16", True),
    ),
    "train --show: without --data, where image_size comes from": (
        lambda m: "first store's own size" in m.alone["image_size"][1] and m.alone["image_size"][0] != "None",
        True,
    ),
    "train --show: per_class None is every image": (lambda m: m.alone["per_class"][0], "all"),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_records_say_what_was_used(case, made):
    said, used = RECORDS[case]
    assert said(made) == (used(made) if callable(used) else used), case


def test_a_classifier_fingerprint_is_its_weights(tmp_path):
    """Two files of the same weights share it whatever their records say; other weights do not."""
    import torch

    from synthkit.io.checkpoint import save_checkpoint

    def saved(name: str, weight: float, note: str) -> str:
        path = tmp_path / f"{name}.safetensors"
        return fingerprint(save_checkpoint(path, {"w": torch.full((3,), weight)}, {"kind": "classifier", "note": note}))

    a, b, c = saved("a", 1.0, "one"), saved("b", 1.0, "two"), saved("c", 2.0, "one")
    assert a == b != c and len(a) == 16
