from pathlib import Path

import h5py
import numpy as np
import pytest

from synthkit.core.errors import UserError
from synthkit.core.jobs import shard_range
from synthkit.core.meta import provenance
from synthkit.core.paths import partial_path, store_path, store_paths
from synthkit.io.store import Store, StoreWriter, balanced_subset, merge_stores

from conftest import run

CLASSES = ["a", "b", "c"]


def fake_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def write(path, images, labels, *, batch=4, shard="", first=0, **kwargs):
    """A store of `images` whose columns number them from `first` (a shard's first row in the whole)."""
    meta = provenance("test", {"n": len(images)})
    with StoreWriter(
        path,
        classes=CLASSES,
        image_shape=(8, 8),
        meta=meta,
        columns={"idx": "int", "note": "str"},
        total=len(images),
        shard=shard,
        **kwargs,
    ) as w:
        for s in range(w.done, len(images), batch):
            rows = range(first + s, first + min(s + batch, len(images)))
            w.append(images[s : s + batch], labels[s : s + batch], idx=np.array(rows), note=[f"img{i}" for i in rows])
    return Path(path)


def test_round_trip_metadata_and_columns(tmp_path):
    images, labels = fake_images(10), np.arange(10) % 3
    path = write(tmp_path / "s.h5", images, labels)
    with Store(path) as s:
        assert len(s) == 10 and s.classes == CLASSES and s.image_shape == (8, 8, 3)
        np.testing.assert_array_equal(s.images(), images)
        np.testing.assert_array_equal(s.labels, labels)
        assert list(s.column("note")[:2]) == ["img0", "img1"]
        np.testing.assert_array_equal(s.column("idx"), np.arange(10))
        assert s.meta["kind"] == "test" and s.meta["params"] == {"n": 10}
        assert s.meta["synthkit_version"] and s.meta["created"] and "command" in s.meta
        assert list(s.counts()) == [4, 3, 3]
        assert len(s.fingerprint) == 16
    assert not partial_path(path).exists()


def test_partial_reads_any_order_and_repeats(tmp_path):
    images = fake_images(50)
    path = write(tmp_path / "s.h5", images, np.zeros(50, int))
    with Store(path) as s:
        idx = np.array([41, 3, 3, 17, 0])
        np.testing.assert_array_equal(s.images(idx), images[idx])
        np.testing.assert_array_equal(s.images(slice(5, 9)), images[5:9])
        np.testing.assert_array_equal(s.images([7, 8, 9]), images[7:10])
        assert list(s.column("note", [2, 0])) == ["img2", "img0"]
        with pytest.raises(IndexError):
            s.images([50])


def test_chunked_for_random_batches(tmp_path):
    path = write(tmp_path / "s.h5", fake_images(20), np.zeros(20, int))
    with h5py.File(path) as f:
        chunks = f["images"].chunks
    assert chunks[1:] == (8, 8, 3) and 1 <= chunks[0] <= 1024


def test_interrupted_write_leaves_no_final_file_and_resume_matches(tmp_path):
    images, labels = fake_images(21), np.arange(21) % 3
    ref = write(tmp_path / "ref.h5", images, labels)
    out = tmp_path / "s.h5"
    meta = provenance("test", {"n": 21})
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(
            out, classes=CLASSES, image_shape=(8, 8), meta=meta, columns={"idx": "int", "note": "str"}, total=21
        ) as w:
            w.append(images[:4], labels[:4], idx=np.arange(4), note=[f"img{i}" for i in range(4)])
            raise KeyboardInterrupt
    assert not out.exists() and partial_path(out).exists()
    write(out, images, labels, resume=True)
    with Store(out) as a, Store(ref) as b:
        np.testing.assert_array_equal(a.images(), b.images())
        np.testing.assert_array_equal(a.column("idx"), b.column("idx"))
        assert list(a.column("note")) == list(b.column("note"))
        assert a.fingerprint == b.fingerprint


def test_resume_with_other_parameters_is_refused(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(out, classes=CLASSES, image_shape=(8, 8), meta=provenance("t", {"n": 1}), total=5):
            raise KeyboardInterrupt
    with pytest.raises(UserError, match="other options"):
        StoreWriter(out, classes=CLASSES, image_shape=(8, 8), meta=provenance("t", {"n": 2}), total=5, resume=True)


def test_existing_output_needs_overwrite_or_resume(tmp_path):
    images, labels = fake_images(3), np.zeros(3, int)
    path = write(tmp_path / "s.h5", images, labels)
    with pytest.raises(UserError, match="--overwrite"):
        write(path, images, labels)
    write(path, fake_images(3, seed=1), labels, overwrite=True)
    with Store(path) as s:
        np.testing.assert_array_equal(s.images(), fake_images(3, seed=1))


def test_user_error_inside_writer_removes_the_partial(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(UserError):
        with StoreWriter(out, classes=CLASSES, image_shape=(8, 8), meta={}, total=3):
            raise UserError("bad image")
    assert not out.exists() and not partial_path(out).exists()


def test_merge_shards_equals_unsharded(tmp_path):
    images, labels = fake_images(23), np.arange(23) % 3
    ref = write(tmp_path / "ref.h5", images, labels)
    shards = []
    for i in (2, 0, 1):
        start, stop = shard_range(23, f"{i}/3")
        shards.append(write(tmp_path / f"s{i}.h5", images[start:stop], labels[start:stop], shard=f"{i}/3", first=start))
    merged = merge_stores(shards, tmp_path / "m.h5", provenance("test", {}))
    with Store(merged) as m, Store(ref) as r:
        np.testing.assert_array_equal(m.images(), r.images())
        np.testing.assert_array_equal(m.labels, r.labels)
        assert m.fingerprint == r.fingerprint
        assert m.column_names == r.column_names == ["idx", "note"]
        np.testing.assert_array_equal(m.column("idx"), np.arange(23))
        assert list(m.column("note")) == list(r.column("note")) == [f"img{i}" for i in range(23)]
        assert [s["shard"] for s in m.meta["sources"]] == ["0/3", "1/3", "2/3"]
    with pytest.raises(UserError, match="all of"):
        merge_stores(shards[:2], tmp_path / "m2.h5", {})


def test_merge_refuses_other_classes(tmp_path):
    a = write(tmp_path / "a.h5", fake_images(3), np.zeros(3, int))
    meta = provenance("test", {})
    with StoreWriter(
        tmp_path / "b.h5", classes=["x", "y", "z"], image_shape=(8, 8), meta=meta, columns={"idx": "int", "note": "str"}
    ) as w:
        w.append(fake_images(1), [0], idx=[0], note=["n"])
    with pytest.raises(UserError, match="are not those of"):
        merge_stores([a, tmp_path / "b.h5"], tmp_path / "m.h5", meta)


def test_not_a_store(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(UserError, match="not an HDF5"):
        Store(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["images"] = np.zeros(3)
    with pytest.raises(UserError, match="not a synthkit store"):
        Store(tmp_path / "y.h5")
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "missing.h5")


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 10)
    a = balanced_subset(labels, 3, seed=5)
    assert np.array_equal(a, balanced_subset(labels, 3, seed=5))
    assert not np.array_equal(a, balanced_subset(labels, 3, seed=6))
    assert list(np.bincount(labels[a])) == [3, 3, 3, 3]
    with pytest.raises(UserError):
        balanced_subset(labels, 11, seed=0)


def test_store_names_resolve_to_data_folder():
    assert store_path("real") == Path("data/real.h5")
    assert store_path("x/real") == Path("x/real")
    assert store_path("real.h5") == Path("real.h5")
    assert store_paths("real,inv") == [Path("data/real.h5"), Path("data/inv.h5")]
    assert store_paths(["real", "sd,inv"]) == [Path("data/real.h5"), Path("data/sd.h5"), Path("data/inv.h5")]


def test_shard_range_covers_everything_once():
    pieces = [shard_range(10, f"{i}/3") for i in range(3)]
    assert pieces == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(UserError):
        shard_range(10, "3/3")
    with pytest.raises(UserError):
        shard_range(10, "abc")


def test_block_reads_match_for_dense_and_sparse_selections(tmp_path, monkeypatch):
    import synthkit.io.store as store_module

    images = fake_images(300)
    path = write(tmp_path / "s.h5", images, np.zeros(300, int), batch=50)
    monkeypatch.setattr(store_module, "_BLOCK_BYTES", 40 * 8 * 8 * 3)  # 40 rows a block
    rng = np.random.default_rng(0)
    with Store(path) as s:
        for idx in (
            np.arange(0, 300, 2),
            rng.choice(300, 7, replace=False),
            rng.integers(0, 300, 500),
            np.array([299, 0]),
        ):
            np.testing.assert_array_equal(s.images(idx), images[idx])


def test_subsets_of_one_seed_are_nested():
    labels = np.repeat(np.arange(4), 50)
    sizes = [balanced_subset(labels, n, seed=3) for n in (2, 10, 50)]
    assert set(sizes[0]) <= set(sizes[1]) <= set(sizes[2]) and len(sizes[1]) == 40


def test_subset_copies_a_store_or_a_balanced_part_of_it(tmp_path, real_store):
    whole = run("subset", real_store, "--out", tmp_path / "whole.h5")
    part = run("subset", real_store, "--per-class", 2, "--seed", 1, "--out", tmp_path / "part.h5")
    assert whole.exit_code == 0 and part.exit_code == 0, whole.output + part.output
    with Store(real_store) as r, Store(tmp_path / "whole.h5") as w, Store(tmp_path / "part.h5") as p:
        assert np.array_equal(w.images(), r.images()) and w.meta["kind"] == "real"
        assert w.column_names == sorted(r.column_names + ["parent_row"]) and list(w.column("parent_row")) == list(
            range(len(r))
        )
        assert list(p.counts()) == [2] * 10 and p.meta["sources"][0]["fingerprint"] == r.fingerprint
        assert set(p.column("source_name")) <= set(r.column("source_name"))
        parent = p.column("parent_row")  # each image's row in the source
        assert np.array_equal(p.images(), r.images(parent)) and list(p.column("source_name")) == list(
            r.column("source_name", parent)
        )
    again = run("subset", real_store, "--out", tmp_path / "whole.h5")
    assert again.exit_code == 2 and "exists" in again.stderr
