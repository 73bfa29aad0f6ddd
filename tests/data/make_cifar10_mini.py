"""Cut tests/data/cifar10-mini.tar.gz from the shared CIFAR-10 JPEG archive.

The first 12 train and 6 test images of every class, copied byte for byte (same layout:
cifar10/{train,test}/<class>/NNNN.jpg). Deterministic: members keep the source's metadata and
the gzip header carries no time, so rerunning gives the same file.

    .venv/bin/python tests/data/make_cifar10_mini.py [../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import gzip
import sys
import tarfile
from pathlib import Path

KEEP = {"train": 12, "test": 6}
HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cut(source: Path, out: Path) -> Path:
    with (
        tarfile.open(source, "r:gz") as src,
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and int(parts[3].split(".")[0]) < KEEP[parts[1]]:
                member.uid = member.gid = 0
                member.uname = member.gname = ""
                dst.addfile(member, src.extractfile(member))
    return out


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    print(cut(source, HERE / "cifar10-mini.tar.gz"))
