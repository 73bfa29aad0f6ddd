import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from synthkit import CIFAR10_CLASSES
from synthkit.core.errors import UserError
from synthkit.core.paths import partial_path
from synthkit.io.datasets import import_cifar10, import_folder
from synthkit.io.store import Store, StoreWriter

from conftest import MINI_ARCHIVE, make_image_folder, png_bytes, run, tar_folder


def read(path):
    with Store(path) as s:
        return s.images(), s.labels, list(s.column("source_name"))


def test_image_folder_tree_and_its_archives_agree(tmp_path):
    folder = make_image_folder(tmp_path / "tree", per_class=3)
    from_dir = read(import_cifar10(tmp_path / "a.h5", source=folder))
    tar = tar_folder(folder, tmp_path / "c.tar")
    tgz = tar_folder(folder, tmp_path / "c.tar.gz")
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(folder.rglob("*.png")):
            z.write(p, p.relative_to(folder.parent))
    for i, src in enumerate((tar, tgz, zpath)):
        images, labels, _ = read(import_cifar10(tmp_path / f"{i}.h5", source=src))
        np.testing.assert_array_equal(images, from_dir[0])
        np.testing.assert_array_equal(labels, from_dir[1])
    assert list(from_dir[1]) == [c for c in range(10) for _ in range(3)]
    assert from_dir[2][0].endswith("train/airplane/0.png")


def write_batches(folder, n_per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f, protocol=2)
        expected.append((data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels))
    return expected


def test_python_batches_folder_and_tarball(tmp_path):
    expected = write_batches(tmp_path / "cifar-10-batches-py")
    images, labels, names = read(import_cifar10(tmp_path / "a.h5", source=tmp_path, split="train"))
    np.testing.assert_array_equal(images, np.concatenate([e[0] for e in expected[:5]]))
    assert list(labels) == sum((e[1] for e in expected[:5]), [])
    assert names[0] == "data_batch_1:0"
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    test_images, test_labels, _ = read(import_cifar10(tmp_path / "b.h5", source=tgz, split="test"))
    np.testing.assert_array_equal(test_images, expected[5][0])
    assert list(test_labels) == expected[5][1]


def test_batches_that_execute_code_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UserError, match="not a CIFAR-10 batch"):
        import_cifar10(tmp_path / "x.h5", source=folder, split="test")


def test_committed_fixture_is_real_cifar10_in_the_shared_layout(tmp_path):
    with tarfile.open(MINI_ARCHIVE) as tar:
        names = [m.name for m in tar if m.isfile()]
    assert len(names) == 10 * (12 + 6) and all(n.endswith(".jpg") for n in names)
    for split, n in (("train", 12), ("test", 6)):
        with Store(import_cifar10(tmp_path / f"{split}.h5", source=MINI_ARCHIVE, split=split)) as s:
            assert list(s.counts()) == [n] * 10 and s.image_shape == (32, 32, 3) and s.classes == list(CIFAR10_CLASSES)
            assert s.images().std() > 20  # real photographs, not a blank placeholder


def test_shared_archive_test_split_and_seeded_subset(tmp_path, shared_archive):
    """The one test on the full shared archive (it skips without it); it also checks the committed fixture's bytes."""
    with tarfile.open(MINI_ARCHIVE) as mini:
        wanted = {m.name: mini.extractfile(m).read() for m in mini if m.isfile()}
    with tarfile.open(shared_archive) as full:
        found = {m.name: full.extractfile(m).read() for m in full if m.name in wanted}
    assert found == wanted, "tests/data/cifar10-mini.tar.gz is no longer a byte-for-byte cut of the shared archive"
    result = run("data", "cifar10", "--source", shared_archive, "--split", "test", "--out", tmp_path / "test.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "test.h5") as s:
        assert len(s) == 10_000 and list(s.counts()) == [1000] * 10 and s.image_shape == (32, 32, 3)
    fingerprints = []
    for name in ("a", "b"):
        result = run(
            "data",
            "cifar10",
            "--source",
            shared_archive,
            "--per-class",
            500,
            "--seed",
            0,
            "--out",
            tmp_path / f"{name}.h5",
        )
        assert result.exit_code == 0, result.output
        with Store(tmp_path / f"{name}.h5") as s:
            assert len(s) == 5000 and list(s.counts()) == [500] * 10
            fingerprints.append((s.fingerprint, tuple(s.column("source_index"))))
    assert fingerprints[0] == fingerprints[1]


def test_killed_import_leaves_no_store_and_resume_completes_it(tmp_path, cifar_small_archive, monkeypatch):
    ref = import_cifar10(tmp_path / "ref.h5", source=cifar_small_archive, batch_size=16)
    calls = {"n": 0}
    original = StoreWriter.append

    def dying_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C or a kill between batches looks like to the writer
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "append", dying_append)
    out = tmp_path / "real.h5"
    with pytest.raises(KeyboardInterrupt):
        import_cifar10(out, source=cifar_small_archive, batch_size=16)
    assert not out.exists()
    monkeypatch.setattr(StoreWriter, "append", original)
    result = run("data", "cifar10", "--source", cifar_small_archive, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    with Store(out) as a, Store(ref) as b:
        np.testing.assert_array_equal(a.images(), b.images())
        assert a.fingerprint == b.fingerprint and len(a) == 120


@pytest.mark.parametrize("case", ["missing", "no_classes", "corrupt", "unknown_class", "exists", "no_source"])
def test_bad_input_one_line_exit_2_no_output(tmp_path, case):
    out = tmp_path / "out.h5"
    source = tmp_path / "src"
    if case == "no_classes":
        source = tmp_path / "empty.tar.gz"
        (tmp_path / "readme.txt").write_text("nothing here")
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tmp_path / "readme.txt", arcname="data/readme.txt")
    elif case == "corrupt":
        folder = make_image_folder(tmp_path / "tree", per_class=2)
        (folder / "train" / "cat" / "1.png").write_bytes(b"this is not a png")
        source = folder
    elif case == "unknown_class":
        source = make_image_folder(tmp_path / "tree", per_class=1, classes=list(CIFAR10_CLASSES) + ["unicorn"])
    elif case == "exists":
        source = make_image_folder(tmp_path / "tree", per_class=1)
        out.write_bytes(b"previous")
    args = ["data", "cifar10", "--out", out] + ([] if case == "no_source" else ["--source", source])
    result = run(*args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "Traceback" not in result.output
    assert len(message.splitlines()) == 1, message
    assert not (tmp_path / "out.h5.partial").exists()
    assert (out.read_bytes() == b"previous") if case == "exists" else not out.exists()
    expected = {
        "missing": "does not exist",
        "no_classes": "no images",
        "corrupt": "1.png is not a readable image",
        "unknown_class": "unicorn",
        "exists": "--overwrite",
        "no_source": "--source",
    }[case]
    assert expected in message


def test_images_of_another_size_are_refused(tmp_path):
    folder = make_image_folder(tmp_path / "tree", per_class=1)
    (folder / "train" / "dog" / "0.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(UserError, match="16x16"):
        import_cifar10(tmp_path / "x.h5", source=folder)


def test_any_image_folder_becomes_a_store_with_its_own_classes(tmp_path, cifar_small_archive):
    out = tmp_path / "folder.h5"
    result = run("data", "folder", "--source", cifar_small_archive, "--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    reference = tmp_path / "cifar.h5"
    assert run("data", "cifar10", "--source", cifar_small_archive, "--split", "test", "--out", reference).exit_code == 0
    with Store(out) as a, Store(reference) as b:
        assert a.classes == sorted(b.classes) and len(a) == len(b) == 60
        names = list(a.column("source_name"))
        assert names[0].endswith("test/airplane/0000.jpg") and all("/test/" in n for n in names)
        mapped = np.array([a.classes.index(b.classes[label]) for label in b.labels])
        order = np.argsort(mapped, kind="stable")  # same images, in the folder's class order
        assert np.array_equal(a.images(), b.images()[order]) and np.array_equal(a.labels, mapped[order])


def scenes(root: Path) -> Path:
    """Real CIFAR images blown up to three different sizes, in a flat folder and in two class folders."""
    from PIL import Image

    from synthkit.io.datasets import open_source

    src = open_source(MINI_ARCHIVE, "train")
    images = src.decode(np.arange(0, 120, 20))
    for k, (image, size) in enumerate(zip(images, [(96, 64), (64, 80), (120, 90)] * 2)):
        folder = root / ("street" if k % 2 else "tower")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize(size, Image.BICUBIC).save(folder / f"img{k}.png")
    return root


def test_folder_import_resizes_and_centre_crops_or_names_the_odd_size(tmp_path):
    root = scenes(tmp_path / "scenes")
    result = run("data", "folder", "--source", root, "--out", tmp_path / "raw.h5")
    assert result.exit_code == 2 and "give --size" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "raw.h5").exists() and not (tmp_path / "raw.h5.partial").exists()
    result = run("data", "folder", "--source", root, "--size", 48, "--out", tmp_path / "s.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.h5") as s:
        assert s.classes == ["street", "tower"] and list(s.counts()) == [3, 3] and s.image_shape == (48, 48, 3)
        assert [n.split("/")[-1] for n in s.column("source_name")] == [
            "img1.png",
            "img3.png",
            "img5.png",
            "img0.png",
            "img2.png",
            "img4.png",
        ]
    from synthkit.io.datasets import centre_crop

    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, 30:60] = 255  # the centre third is white
    assert np.all(centre_crop(wide, 30) == 255)
    result = run(
        "data",
        "folder",
        "--source",
        root / "tower",
        "--class-name",
        "urban scene",
        "--size",
        32,
        "--out",
        tmp_path / "one.h5",
    )
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "one.h5") as s:
        assert s.classes == ["urban scene"] and len(s) == 3


def test_folder_archive_made_with_dot_members(tmp_path):
    import tarfile as tf

    root = scenes(tmp_path / "scenes")
    archive = tmp_path / "scenes.tgz"
    with tf.open(archive, "w:gz") as tar:  # as `tar -czf scenes.tgz -C scenes .` names them: ./tower/img0.png
        tar.add(root, arcname=".")
    result = run("data", "folder", "--source", archive, "--size", 32, "--out", tmp_path / "s.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.h5") as s:
        assert s.classes == ["street", "tower"] and len(s) == 6


@pytest.mark.parametrize("case", ["bomb", "truncated", "unsupported", "over budget"])
def test_an_image_that_cannot_be_decoded_is_one_error_naming_it(tmp_path, case):
    """A decompression bomb (20,000 x 20,000 in a few hundred KB), a truncated file, a format PIL cannot read, and
    an image larger than the memory budget once decoded: one error line naming the file, no .partial left."""
    from PIL import Image

    folder = make_image_folder(tmp_path / "tree", per_class=2, classes=["cat", "dog"])
    bad = folder / "train" / "dog" / "9.png"
    if case == "bomb":
        Image.new("1", (20_000, 20_000)).save(bad, optimize=True)  # 1-bit pixels compress to a few hundred KB
        assert bad.stat().st_size < 1_000_000
    elif case == "truncated":
        bad.write_bytes(png_bytes(np.full((32, 32, 3), 7, np.uint8))[:60])
    elif case == "unsupported":
        bad.write_bytes(b"%PDF-1.4 not an image format PIL reads")
    else:
        Image.new("RGB", (600, 600)).save(bad)
    out = tmp_path / "out.h5"
    limit = ["--memory-limit", "500KB"] if case == "over budget" else []
    result = run("data", "folder", "--source", folder, "--split", "train", "--size", "32", "--out", out, *limit)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message.splitlines()) == 1 and "Traceback" not in result.output
    assert "train/dog/9.png" in message, message
    assert not out.exists() and not partial_path(out).exists()


def test_a_class_folder_without_images_is_an_error_and_other_files_are_named(tmp_path):
    folder = make_image_folder(tmp_path / "tree", per_class=2, classes=["cat", "dog"])
    (folder / "train" / "bird").mkdir()
    (folder / "train" / "bird" / "notes.txt").write_text("no pictures here")
    out = tmp_path / "out.h5"
    result = run("data", "folder", "--source", folder, "--split", "train", "--out", out)
    assert result.exit_code == 2 and "class folder(s) bird hold no image" in result.stderr and not out.exists()
    (folder / "train" / "bird" / "notes.txt").rename(folder / "train" / "cat" / "notes.txt")
    (folder / "train" / "bird").rmdir()
    result = run("data", "folder", "--source", folder, "--split", "train", "--out", out)
    assert result.exit_code == 0, result.output
    assert "skipped 1 file(s) that are not images: train/cat/notes.txt" in result.stderr
    with Store(out) as s:
        assert s.classes == ["cat", "dog"] and len(s) == 4


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_larger_than_the_memory_limit_is_read_within_it(tmp_path, kind):
    """60 incompressible 256 px PNGs (12 MB) imported under a 1 MB limit: the archive is read a file at a time and
    decoded in windows of 85 rows of 64 px (1 MB), so the peak of Python's allocations stays under the limit plus
    the decoding of one file (the old reader held every member's bytes at once, 12 MB), and the store equals an
    import without a limit."""
    import tracemalloc

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(30):
            (tmp_path / "tree" / cls / f"{i}.png").write_bytes(
                png_bytes(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
            )
    archive = tmp_path / f"tree.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted((tmp_path / "tree").rglob("*.png")):
                z.write(p, p.relative_to(tmp_path / "tree"))
    else:
        tar_folder(tmp_path / "tree", archive)
    assert archive.stat().st_size > 10_000_000
    tracemalloc.start()
    import_folder(tmp_path / "limited.h5", source=archive, size=64, memory_limit="1MB")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < (1 << 20) + 1_500_000, peak  # the limit, plus one 197 KB file and its decoding buffers
    import_folder(tmp_path / "whole.h5", source=archive, size=64)
    import_folder(tmp_path / "windows.h5", source=archive, size=64, memory_limit="300KB")  # 3 windows of 25 rows
    with Store(tmp_path / "limited.h5") as a, Store(tmp_path / "whole.h5") as b, Store(tmp_path / "windows.h5") as c:
        assert (
            len(a) == 60
            and np.array_equal(a.images(), b.images())
            and list(a.column("source_name")) == list(b.column("source_name"))
        )
        assert np.array_equal(c.images(), b.images()) and np.array_equal(c.labels, b.labels)
