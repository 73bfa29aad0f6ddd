"""CIFAR-100 and STL-10 in the layouts torchvision downloads, built here from real CIFAR-10 pixels."""

import os
import pickle
import tarfile

import numpy as np
import pytest

from synthkit.io.store import Store

from conftest import run, write_cifar100, write_stl10


@pytest.fixture(scope="module")
def pixels(real_store):
    with Store(real_store) as s:
        return s.images(), s.labels


def test_cifar100_pickles_become_a_store_with_their_fine_classes(tmp_path, pixels):
    images, labels = pixels
    names = [f"fine{i}" for i in range(100)]
    fine = np.arange(len(labels)) % 100  # every one of the 100 classes
    write_cifar100(tmp_path / "dl", images, fine, names)
    result = run("data", "cifar100", "--source", tmp_path / "dl", "--split", "test", "--out", tmp_path / "c100.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "c100.h5") as s:
        assert s.classes == names and np.array_equal(s.labels, fine) and np.array_equal(s.images(), images)
        assert s.meta["params"]["dataset"] == "cifar100"
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "dl" / "cifar-100-python", arcname="cifar-100-python")
    result = run(
        "data",
        "cifar100",
        "--source",
        tmp_path / "cifar-100-python.tar.gz",
        "--per-class",
        1,
        "--out",
        tmp_path / "sub.h5",
    )
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "sub.h5") as s:
        assert len(s) == 100 and s.counts().max() == 1


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_cifar100_pickle_that_runs_code_is_refused(tmp_path, pixels):
    images, labels = pixels
    folder = write_cifar100(tmp_path / "dl", images, labels, [f"c{i}" for i in range(100)])
    (folder / "train").write_bytes(pickle.dumps({b"data": Exploit(), b"fine_labels": []}))
    result = run("data", "cifar100", "--source", tmp_path / "dl", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "refusing to load posix.system" in result.stderr and "pwned" not in result.output
    assert not (tmp_path / "x.h5").exists()


def test_stl10_binaries_become_a_96_px_store(tmp_path, pixels):
    import torch

    from synthkit.classify.model import resize_images

    images, labels = pixels
    images96 = resize_images(torch.from_numpy(images).permute(0, 3, 1, 2), 96).permute(0, 2, 3, 1).numpy()
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    write_stl10(tmp_path / "dl", images96, labels, names)
    result = run("data", "stl10", "--source", tmp_path / "dl", "--out", tmp_path / "stl.h5")
    assert result.exit_code == 0, result.output
    assert "96x96x3" in result.output
    with Store(tmp_path / "stl.h5") as s:
        assert s.classes == names and np.array_equal(s.labels, labels) and np.array_equal(s.images(), images96)
    (tmp_path / "dl" / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 100)
    bad = run("data", "stl10", "--source", tmp_path / "dl", "--out", tmp_path / "bad.h5")
    assert bad.exit_code == 2 and "not STL-10's 96x96 images" in bad.stderr and not (tmp_path / "bad.h5").exists()


def test_download_without_internet_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise RuntimeError("no route to host")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    for dataset, name in (("stl10", "STL10"), ("cifar100", "CIFAR100"), ("cifar10", "CIFAR10")):
        result = run(
            "data", dataset, "--download", "--download-root", tmp_path / "dl", "--out", tmp_path / f"{dataset}.h5"
        )
        assert result.exit_code == 2 and result.stderr.startswith(f"error: could not download {name}"), result.output
        assert result.stderr.count("\n") == 1 and not (tmp_path / f"{dataset}.h5").exists()
    both = run("data", "cifar100", "--download", "--source", tmp_path, "--out", tmp_path / "c.h5")
    assert both.exit_code == 2 and "give either --source" in both.stderr


def test_a_downloaded_cifar100_is_read_only_by_the_restricted_unpickler(tmp_path, monkeypatch, pixels):
    """torchvision's downloader fetches the archive; its dataset class, which would pickle.load the files, is not
    used."""
    import torchvision.datasets.utils

    images, labels = pixels
    names = [f"fine_{i}" for i in range(100)]
    write_cifar100(tmp_path / "made", images, np.arange(len(labels)) % 100, names)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "made" / "cifar-100-python", arcname="cifar-100-python")
    fetched = []

    def download_and_extract_archive(url, download_root, filename=None, md5=None, **kwargs):
        fetched.append((url, filename, md5))
        with tarfile.open(tmp_path / "cifar-100-python.tar.gz") as tar:
            tar.extractall(download_root)

    def unrestricted(*args, **kwargs):
        raise AssertionError("plain pickle.load was called")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", download_and_extract_archive)
    monkeypatch.setattr(pickle, "load", unrestricted)
    monkeypatch.setattr(pickle, "loads", unrestricted)
    result = run(
        "data",
        "cifar100",
        "--download",
        "--download-root",
        tmp_path / "dl",
        "--split",
        "test",
        "--out",
        tmp_path / "c.h5",
    )
    assert result.exit_code == 0, result.output
    assert fetched == [
        (torchvision.datasets.CIFAR100.url, "cifar-100-python.tar.gz", torchvision.datasets.CIFAR100.tgz_md5)
    ]
    with Store(tmp_path / "c.h5") as s:
        assert s.classes == names and len(s) == len(labels)
