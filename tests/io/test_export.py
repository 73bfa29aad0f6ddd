"""synthkit export, checked by the readers of each format (Hugging Face datasets, torchvision, webdataset), the round
trips back through data folder and data webdataset, synthkit.open_store under a DataLoader, and the README's
section "Using synthkit's data elsewhere", whose commands and examples run here."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest

from synthkit.core.meta import provenance
from synthkit.core.paths import partial_path
from synthkit.io.export import folder_name
from synthkit.io.store import Store, StoreWriter

from conftest import png_bytes, run, tar_folder, usage_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inv_store(tmp_path_factory, real_store) -> Path:
    """real_store's images as a synthetic store holds them: its classes interleaved row by row, kind inv, and
    columns of every kind (text with quotes, a newline and non-ASCII letters; floats with a NaN; integers beyond
    32 bits)."""
    out = tmp_path_factory.mktemp("stores") / "inv.h5"
    with Store(real_store) as s:
        order = np.random.default_rng(0).permutation(len(s))
        n = len(order)
        columns = {"source_index": "int", "prompt": "str", "alpha": "float", "seed": "int", "parent_row": "int"}
        meta = provenance("inv", {"per_image": 1}) | {"model": "mini"}
        with StoreWriter(out, classes=s.classes, image_shape=(32, 32), meta=meta, columns=columns, total=n) as writer:
            alpha = np.linspace(0, 1, n)
            alpha[3] = np.nan
            writer.append(
                s.images(order),
                s.labels[order],
                source_index=order,
                prompt=[f'a "photo" of a {s.classes[c]} n°{k}\nécrit' for k, c in enumerate(s.labels[order])],
                alpha=alpha,
                seed=(1 << 40) + np.arange(n),
                parent_row=order,
            )
    return out


def read(path: Path) -> dict:
    with Store(path) as s:
        return {
            "images": s.images(),
            "labels": s.labels.copy(),
            "classes": s.classes,
            "kinds": {name: s.column_kind(name) for name in s.column_names},
            "columns": {name: s.column(name) for name in s.column_names},
            "kind": s.meta["kind"],
            "fingerprint": s.fingerprint,
        }


def assert_same_store(a: dict, b: dict) -> None:
    """Pixels, labels, classes, column names, kinds and values (NaN equal to NaN), kind and fingerprint."""
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert a["classes"] == b["classes"] and a["kinds"] == b["kinds"] and a["kind"] == b["kind"]
    for name, values in a["columns"].items():
        if a["kinds"][name] == "float":
            assert np.array_equal(values, b["columns"][name], equal_nan=True), name
        else:
            assert list(values) == list(b["columns"][name]), name
    assert a["fingerprint"] == b["fingerprint"]


def export(store: Path, out: Path, fmt: str, *options) -> str:
    result = run("export", store, "--format", fmt, "--out", out, *options)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory, inv_store) -> Path:
    out = tmp_path_factory.mktemp("exports") / "inv"
    line = export(inv_store, out, "imagefolder")
    assert line.startswith(f"wrote {out}: 120 images of 10 classes as imagefolder")
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, inv_store) -> Path:
    out = tmp_path_factory.mktemp("exports") / "inv-wds"
    line = export(inv_store, out, "webdataset", "--shard-size", 50)
    assert "in 3 shard(s)" in line and line.rstrip().endswith("KB") and "inv-{000000..000002}.tar" in line
    return out


@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory):
    """Hugging Face datasets (the test extra), offline, with its caches in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1")):
            patch.setenv(name, value)
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
        import datasets

        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        datasets.disable_progress_bars()
        yield datasets


def test_imagefolder_is_read_by_hugging_face_datasets_and_torchvision(folder, inv_store, hf_datasets, tmp_path):
    import torchvision
    from datasets import Image

    original = read(inv_store)
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 120 and lines[0]["file_name"] == f"{original['classes'][original['labels'][0]]}/000000.png"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*original["classes"], "metadata.jsonl", "provenance.json"]
    )
    record = json.loads((folder / "provenance.json").read_text())
    assert record["store"]["kind"] == "inv" and record["export"]["sources"][0]["fingerprint"] == original["fingerprint"]

    hf = hf_datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path))
    assert set(hf.column_names) == {"image", "label", "class_name", *original["kinds"]} and len(hf) == 120
    rows = [int(Path(image["path"]).stem) for image in hf.cast_column("image", Image(decode=False))["image"]]
    assert sorted(rows) == list(range(120))
    for k, row in enumerate(rows):
        sample = hf[k]
        assert np.array_equal(np.asarray(sample["image"].convert("RGB")), original["images"][row])
        assert sample["label"] == original["labels"][row]
        assert sample["class_name"] == original["classes"][original["labels"][row]]
        assert sample["prompt"] == original["columns"]["prompt"][row] and sample["seed"] == (1 << 40) + row
    assert hf[rows.index(3)]["alpha"] is None and hf[rows.index(4)]["alpha"] == original["columns"]["alpha"][4]

    tv = torchvision.datasets.ImageFolder(str(folder))
    assert tv.classes == original["classes"]  # CIFAR-10's names sort in class order: the store's own indices
    for path, target in tv.samples:
        row = int(Path(path).stem)
        assert target == original["labels"][row]
        assert np.array_equal(np.asarray(tv.loader(path)), original["images"][row])


def test_imagefolder_comes_back_as_the_same_store(folder, inv_store, tmp_path):
    original = read(inv_store)
    result = run("data", "folder", "--source", folder, "--out", tmp_path / "back.h5")
    assert result.exit_code == 0, result.output
    assert_same_store(original, read(tmp_path / "back.h5"))
    with Store(tmp_path / "back.h5") as s:
        assert s.meta["model"] == "mini" and s.meta["sources"][0]["exported_from"][0]["path"] == str(inv_store)
    archive = tar_folder(folder, tmp_path / "inv.tar.gz")  # members inv/<class>/<row>.png: an archive of it too
    result = run("data", "folder", "--source", archive, "--out", tmp_path / "from-archive.h5")
    assert result.exit_code == 0, result.output
    assert_same_store(original, read(tmp_path / "from-archive.h5"))


def test_webdataset_shards_are_read_by_the_webdataset_package(shards, inv_store, tmp_path):
    import webdataset

    original = read(inv_store)
    names = sorted(p.name for p in shards.iterdir())
    assert names == ["inv-000000.tar", "inv-000001.tar", "inv-000002.tar", "provenance.json"]
    pattern = str(shards / "inv-{000000..000002}.tar")
    seen = []
    for sample in webdataset.WebDataset(pattern, shardshuffle=False).decode("rgb8"):
        row = int(sample["__key__"])
        record = sample["json"]
        assert np.array_equal(sample["png"], original["images"][row]) and sample["cls"] == original["labels"][row]
        assert record["class_name"] == original["classes"][sample["cls"]] and record["label"] == sample["cls"]
        assert (
            record["prompt"] == original["columns"]["prompt"][row]
            and record["parent_row"] == original["columns"]["parent_row"][row]
        )
        assert (record["alpha"] is None) if row == 3 else record["alpha"] == original["columns"]["alpha"][row]
        seen.append(row)
    assert seen == list(range(120))
    with tarfile.open(shards / "inv-000002.tar") as tar:
        assert [m.name for m in tar][:3] == ["000100.png", "000100.cls", "000100.json"] and len(tar.getnames()) == 60

    by_size = tmp_path / "by-size"
    export(inv_store, by_size, "webdataset", "--shard-size", "40KB")
    urls = sorted(str(p) for p in by_size.glob("*.tar"))
    assert len(urls) > 3 and all(Path(url).stat().st_size <= 40 * 1024 for url in urls)
    assert sum(1 for _ in webdataset.WebDataset(urls, shardshuffle=False)) == 120


def test_webdataset_shards_come_back_as_the_same_store(shards, inv_store, tmp_path):
    original = read(inv_store)
    for name, source in (("pattern", str(shards / "inv-{000000..000002}.tar")), ("folder", shards)):
        result = run("data", "webdataset", "--source", source, "--out", tmp_path / f"{name}.h5")
        assert result.exit_code == 0, result.output
        assert_same_store(original, read(tmp_path / f"{name}.h5"))
    result = run("data", "webdataset", "--source", shards / "inv-000000.tar", "--out", tmp_path / "first.h5")
    assert result.exit_code == 0 and "50 images" in result.stdout, result.output


def anyones_shard(path: Path, samples: list[tuple[str, np.ndarray, str, dict | None]], extra=()) -> Path:
    """A shard as other tools write one: (key, image, class field, JSON) per sample, plus other members."""
    from PIL import Image

    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for key, image, cls, record in samples:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG" if key.endswith("j") else "PNG")
            add(f"{key}.{'jpg' if key.endswith('j') else 'png'}", buffer.getvalue())
            add(f"{key}.txt", b"a caption that is not read")
            if cls is not None:
                add(f"{key}.cls", cls.encode())
            if record is not None:
                add(f"{key}.json", json.dumps(record).encode())
        for name, data in extra:
            add(name, data)
    return path


def test_anyones_shards_with_a_class_field_become_a_store(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    named = {0: "kitten", 1: "puppy"}
    for k in range(2):
        anyones_shard(
            tmp_path / f"web-{k:02d}.tar",
            [
                (
                    f"part{k}/s{i}",
                    images[3 * k + i],
                    f"{(3 * k + i) % 2}\n",
                    {"class_name": named[(3 * k + i) % 2], "score": 0.5 * i, "tags": ["x"], "source": "web"},
                )
                for i in range(3)
            ],
        )
    result = run("data", "webdataset", "--source", tmp_path / "web-{00..01}.tar", "--out", tmp_path / "web.h5")
    assert result.exit_code == 0, result.output
    assert "left out key(s) tags" in result.stderr
    with Store(tmp_path / "web.h5") as s:
        assert s.classes == ["kitten", "puppy"] and list(s.labels) == [k % 2 for k in range(6)]
        assert np.array_equal(s.images(), images) and s.meta["kind"] == "real"
        assert s.column_names == ["score", "source", "source_index", "source_name"]
        assert list(s.column("score")) == [0.0, 0.5, 1.0] * 2 and s.column("source")[0] == "web"
        assert s.column("source_name")[4] == "web-01.tar/part1/s1"
    anyones_shard(tmp_path / "plain.tar", [(f"{i}j", images[i], str(i % 3), None) for i in range(3)])
    result = run("data", "webdataset", "--source", tmp_path / "plain.tar", "--out", tmp_path / "plain.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "plain.h5") as s:
        assert s.classes == ["0", "1", "2"] and list(s.labels) == [0, 1, 2] and s.images().std() > 20


def test_anyones_metadata_jsonl_gives_classes_and_columns(tmp_path):
    """Hugging Face's own layout: a flat folder whose metadata.jsonl names each image's class and caption."""
    rng = np.random.default_rng(2)
    (tmp_path / "hub" / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        (tmp_path / "hub" / "images" / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3), np.uint8)))
        lines.append({"file_name": f"images/{i}.png", "label": ["ship", "cat"][i % 2], "caption": f"picture {i}"})
    (tmp_path / "hub" / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run("data", "folder", "--source", tmp_path / "hub", "--size", 8, "--out", tmp_path / "hub.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "hub.h5") as s:
        assert s.classes == ["cat", "ship"] and list(s.labels) == [1, 0, 1, 0]
        assert list(s.column("caption")) == [f"picture {i}" for i in range(4)]
        assert list(s.column("source_name")) == [f"images/{i}.png" for i in range(4)]


def test_a_part_of_a_store_and_awkward_class_names(tmp_path, inv_store):
    out = tmp_path / "part"
    export(inv_store, out, "imagefolder", "--classes", "ship,cat", "--per-class", 3, "--seed", 1)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in out.iterdir()) == ["cat", "metadata.jsonl", "provenance.json", "ship"]
    assert sorted((line["label"], line["class_name"]) for line in lines) == [(0, "cat")] * 3 + [(1, "ship")] * 3
    original = read(inv_store)
    for line in lines:
        row = int(Path(line["file_name"]).stem)
        assert original["classes"][original["labels"][row]] == line["class_name"] and line["source_index"] >= 0

    awkward = ["zebra", "a/b", "..", ".hidden", "100%", "tab\there"]
    assert [folder_name(c) for c in awkward] == ["zebra", "a%2Fb", "%2E.", "%2Ehidden", "100%25", "tab%09here"]
    store = tmp_path / "awkward.h5"
    with (
        Store(inv_store) as s,
        StoreWriter(store, classes=awkward, image_shape=(32, 32), meta=provenance("real", {}), total=12) as writer,
    ):
        writer.append(s.images(np.arange(12)), np.arange(12) % 6)
    export(store, tmp_path / "awkward", "imagefolder")
    result = run("data", "folder", "--source", tmp_path / "awkward", "--out", tmp_path / "awkward-back.h5")
    assert result.exit_code == 0, result.output
    assert_same_store(read(store), read(tmp_path / "awkward-back.h5"))
    import torchvision

    tv = torchvision.datasets.ImageFolder(str(tmp_path / "awkward"))
    assert tv.classes == sorted(folder_name(c) for c in awkward)  # torchvision's own sorted numbering
    assert all(tv.classes[target] == folder_name(awkward[int(Path(p).stem) % 6]) for p, target in tv.samples)


def test_export_reads_windows_within_the_memory_limit_and_fails_whole(tmp_path, inv_store, monkeypatch):
    """Under a 10 KB limit (3 images of 32 px) the store is read 3 rows at a time and the export's bytes equal an
    unlimited one's; an export failing halfway leaves neither the folder nor its .partial."""
    reads = []
    original = Store.images

    def counted(self, index=None):
        reads.append(len(index))
        return original(self, index)

    monkeypatch.setattr(Store, "images", counted)
    export(inv_store, tmp_path / "whole", "webdataset")
    export(inv_store, tmp_path / "windows", "webdataset", "--memory-limit", "10KB")
    assert reads[0] == 120 and max(reads[1:]) == 3 and sum(reads[1:]) == 120
    assert (tmp_path / "whole/inv-000000.tar").read_bytes() == (tmp_path / "windows/inv-000000.tar").read_bytes()

    def failing(self, index=None):
        if len(reads) > 3:
            raise OSError("disk full")
        reads.append(len(index))
        return original(self, index)

    reads.clear()
    monkeypatch.setattr(Store, "images", failing)
    with pytest.raises(OSError):
        from synthkit.io.export import export_store

        export_store(inv_store, tmp_path / "failed", "imagefolder", memory_limit="10KB")
    assert not (tmp_path / "failed").exists() and not partial_path(tmp_path / "failed").exists()


def test_open_store_is_a_dataset_that_works_under_dataloader_workers(inv_store):
    import pickle

    import torch

    import synthkit

    original = read(inv_store)
    plain = synthkit.open_store(inv_store)
    image, label = plain[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == original["labels"][5]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), original["images"][5])
    assert plain.classes == original["classes"] and plain.targets == list(original["labels"])
    assert plain.column_names == sorted(original["kinds"]) and plain.column("seed")[7] == (1 << 40) + 7
    assert pickle.loads(pickle.dumps(plain))._store is None  # what spawn sends a worker: the path, no HDF5 handle

    flipped = synthkit.open_store(
        inv_store, transform=lambda x: x.flip(-1).float() / 255, target_transform=lambda y: (y, os.getpid())
    )
    parent_handle = flipped._open()  # opened in the parent before the workers fork: each worker opens its own
    loader = torch.utils.data.DataLoader(flipped, batch_size=16, num_workers=2)
    images, targets = zip(*loader)
    assert flipped._store is parent_handle and flipped._pid == os.getpid()
    images, labels, pids = torch.cat(images), torch.cat([t[0] for t in targets]), torch.cat([t[1] for t in targets])
    assert images.dtype == torch.float32 and images.shape == (120, 3, 32, 32)
    expected = torch.from_numpy(original["images"]).permute(0, 3, 1, 2).flip(-1).float() / 255
    assert torch.equal(images, expected) and labels.tolist() == list(original["labels"])
    assert len(set(pids.tolist())) == 2 and os.getpid() not in pids.tolist()  # read in the two workers


@pytest.mark.parametrize(
    "case",
    [
        "format",
        "store",
        "into store",
        "holds store",
        "exists",
        "not an export",
        "class",
        "shard size",
        "no class",
        "climbs",
        "reserved",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, inv_store, case):
    out = tmp_path / "out"
    if case == "format":
        result = run("export", inv_store, "--format", "parquet", "--out", out)
        usage_error(result, "--format", "imagefolder", "webdataset")
        assert not out.exists()
        return
    args = ["export", inv_store, "--format", "imagefolder", "--out", out]
    if case == "store":
        args[-1] = out = inv_store
    elif case == "into store":
        out = inv_store / "exported"
        args[-1] = out
    elif case == "holds store":
        out = inv_store.parent
        args[-1:] = [out, "--overwrite"]
    elif case in ("exists", "not an export"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        args += ["--overwrite"] if case == "not an export" else []
    elif case == "class":
        args += ["--classes", "cat,unicorn"]
    elif case == "shard size":
        args[3] = "webdataset"
        args += ["--shard-size", "lots"]
    elif case == "no class":
        shard = anyones_shard(tmp_path / "s.tar", [("a", np.zeros((8, 8, 3), np.uint8), None, {"x": 1})])
        args = ["data", "webdataset", "--source", shard, "--out", tmp_path / "s.h5"]
    elif case == "climbs":
        shard = anyones_shard(
            tmp_path / "s.tar",
            [("a", np.zeros((8, 8, 3), np.uint8), "0", None)],
            extra=[("../evil.png", png_bytes(np.zeros((8, 8, 3), np.uint8)))],
        )
        args = ["data", "webdataset", "--source", shard, "--out", tmp_path / "s.h5"]
    elif case == "reserved":
        store = tmp_path / "reserved.h5"
        with (
            Store(inv_store) as s,
            StoreWriter(
                store,
                classes=s.classes,
                image_shape=(32, 32),
                meta=provenance("real", {}),
                columns={"label": "int"},
                total=2,
            ) as writer,
        ):
            writer.append(s.images(slice(0, 2)), s.labels[:2], label=[0, 1])
        args[1] = store
    before = {p: p.is_file() and p.stat().st_mtime_ns for p in tmp_path.rglob("*")}  # (a folder's probe of
    # whether it can be written, made and removed at once, changes the folder's time but nothing in it)
    result = run(*args)
    message = result.stderr.strip()
    assert result.exit_code == 2 and message.startswith("error:") and len(message.splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    expected = {
        "store": "is the input",
        "into store": "is a file, not a folder",
        "holds store": "lies inside the output folder",
        "exists": "already exists: pass --overwrite",
        "not an export": "is not a folder synthkit exported",
        "class": "has no class 'unicorn'",
        "shard size": "--shard-size must be a count of samples",
        "no class": "sample 'a' has no class field (KEY.cls)",
        "climbs": "points outside the archive",
        "reserved": "has a column named 'label'",
    }[case]
    assert expected in message, message
    after = {p: p.is_file() and p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, sorted(set(after) ^ set(before))  # nothing written, nothing replaced
    assert inv_store.exists()


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"^## Using synthkit's data elsewhere\n(.*?)^## ", text, re.S | re.M).group(1)


def test_readme_commands_and_examples_run(tmp_path, inv_store, hf_datasets, monkeypatch):
    """Every command of the README's section, then its two Python examples, in a folder whose data/inv.h5 is the
    synthetic store."""
    section = readme_section()
    commands = [
        shlex.split(line, comments=True)
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.startswith("synthkit ")
    ]
    examples = re.findall(r"```python\n(.*?)```", section, re.S)
    assert [c[:2] for c in commands] == [["synthkit", "export"]] * 2 + [["synthkit", "data"]] * 2 and len(examples) == 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/inv.h5").write_bytes(inv_store.read_bytes())
    for command in commands:
        result = run(*command[1:])
        assert result.exit_code == 0, (command, result.output)
    original = read(tmp_path / "data/inv.h5")
    assert_same_store(original, read(tmp_path / "data/inv-back.h5"))
    assert_same_store(original, read(tmp_path / "data/inv-back-wds.h5"))
    for example in examples:
        exec(compile(example, "README.md", "exec"), {})
