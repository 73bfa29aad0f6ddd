"""A small non-CIFAR data set of real photos: 64 px tiles cut from the York Urban training half in ../shared.

Each photo is resized to 256x192 and cut into a 4x3 grid of 64 px tiles; the tile's row is its class (upper: sky
and roof lines, middle: facades and windows, lower: street and ground). The first 40 photos give the training
split, the other 11 the test split, so no photo is in both. Writes an image-folder tree OUT/<split>/<class>/*.png
for `synthkit data folder` (York Urban may not be redistributed: the tree stays on this machine).

    python bench/yud_crops.py data/yud-tiles
    synthkit data folder --source data/yud-tiles --split train --out data/tiles.h5
    synthkit data folder --source data/yud-tiles --split test --out data/tiles-test.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from common import SHARED

CLASSES = ("upper", "middle", "lower")
TRAIN_PHOTOS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--yud", type=Path, default=SHARED / "data" / "yud-train" / "images")
    args = parser.parse_args()
    photos = sorted(args.yud.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"error: no York Urban photos in {args.yud}")
    count = 0
    for k, path in enumerate(photos):
        split = "train" if k < TRAIN_PHOTOS else "test"
        image = Image.open(path).convert("RGB").resize((256, 192), Image.BICUBIC)
        for row, name in enumerate(CLASSES):
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for col in range(4):
                image.crop((64 * col, 64 * row, 64 * col + 64, 64 * row + 64)).save(folder / f"{path.stem}-{col}.png")
                count += 1
    print(f"wrote {count} tiles of {len(photos)} photos to {args.out}")


if __name__ == "__main__":
    main()
