"""Tiny datasets in each real layout, written into a temp folder, with the labels expected after preparation.

Each builder returns ``{id: expected class-index label map (int64 [H, W])}``;
the images are ``size`` x ``size`` (CelebAMask-HQ: images twice the mask size,
as in the release) so preparing at the label size keeps labels untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def blocky(rng: np.random.Generator, shape: tuple[int, int], values: list[int], block: int = 4) -> np.ndarray:
    """A label map of ``block`` x ``block`` tiles drawn from ``values`` (survives 2x nearest downscaling)."""
    h, w = shape
    tiles = rng.choice(values, size=(h // block, w // block))
    return np.kron(tiles, np.ones((block, block), dtype=np.int64)).astype(np.int64)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        Image.fromarray(array.astype(np.uint8), mode=mode).save(path)
    return path


def photo(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def make_folder(root: Path, size: int = 16, n: int = 6, num_classes: int = 5, instances: bool = True) -> dict:
    rng = np.random.default_rng(0)
    (root / "classes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"names": [f"c{i}" for i in range(num_classes)]}))
    expected = {}
    for i in range(n):
        stem = f"img{i:02d}"
        label = blocky(rng, (size, size), list(range(num_classes)))
        ext = "jpg" if i % 2 else "png"
        Image.fromarray(photo(rng, (size, size))).save(_mk(root / "images" / f"{stem}.{ext}"))
        save(root / "labels" / f"{stem}.png", label)
        if instances:
            save(root / "instances" / f"{stem}.png", label * 1000 + 7, mode="I;16")
        expected[stem] = label
    return expected


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def make_ade20k(root: Path, size: int = 16) -> dict:
    rng = np.random.default_rng(1)
    expected = {}
    for split, folder, count in (("train", "training", 3), ("val", "validation", 2)):
        for i in range(count):
            stem = f"ADE_{folder[:5]}_{i:08d}"
            raw = blocky(rng, (size, size), [0, 1, 2, 75, 150])
            Image.fromarray(photo(rng, (size, size))).save(_mk(root / "images" / folder / f"{stem}.jpg"))
            save(root / "annotations" / folder / f"{stem}.png", raw)
            want = raw - 1
            want[raw == 0] = 150
            expected[stem] = (split, want)
    return expected


def make_cityscapes(root: Path, size: int = 16) -> dict:
    rng = np.random.default_rng(2)
    expected = {}
    for split, cities in (("train", ["aachen", "bonn"]), ("val", ["lindau"])):
        for city in cities:
            stem = f"{city}_000000_000019"
            label = blocky(rng, (size, size), [0, 7, 11, 24, 26, 33])
            inst = np.where(label >= 24, label * 1000 + rng.integers(0, 3, size=label.shape), label)
            Image.fromarray(photo(rng, (size, size))).save(
                _mk(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
            gt = root / "gtFine" / split / city
            save(gt / f"{stem}_gtFine_labelIds.png", label)
            save(gt / f"{stem}_gtFine_instanceIds.png", inst, mode="I;16")
            # The release's other files must be ignored.
            Image.fromarray(photo(rng, (size, size))).save(gt / f"{stem}_gtFine_color.png")
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
            expected[stem] = (split, label, inst)
    return expected


CELEBA_PARTS = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]


def make_celebamask_hq(root: Path, size: int = 16, ids: tuple[int, ...] = (0, 1, 2001, 2002)) -> dict:
    """Images 2*size, part masks size (0/255), overlapping so the part order matters."""
    rng = np.random.default_rng(3)
    expected = {}
    for i in ids:
        Image.fromarray(photo(rng, (2 * size, 2 * size))).save(_mk(root / "CelebA-HQ-img" / f"{i}.jpg"))
        want = np.zeros((size, size), np.int64)
        for part in ("skin", "hair", "l_eye", "nose", "cloth"):  # file order differs from class order on purpose
            mask = np.zeros((size, size), bool)
            y0, x0 = rng.integers(0, size // 2, size=2)
            mask[y0 : y0 + size // 2, x0 : x0 + size // 2] = True
            arr = mask.astype(np.uint8) * 255
            folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
            if part == "hair":  # some releases store masks as RGB
                save(folder / f"{i:05d}_{part}.png", np.stack([arr] * 3, -1), mode="RGB")
            else:
                save(folder / f"{i:05d}_{part}.png", arr)
        # Expected: class index = position in the part list; later parts overwrite earlier ones.
        for index, part in enumerate(CELEBA_PARTS):
            path = root / "CelebAMask-HQ-mask-anno" / str(i // 2000) / f"{i:05d}_{part}.png"
            if path.exists():
                arr = np.asarray(Image.open(path))
                want[(arr.max(axis=-1) if arr.ndim == 3 else arr) > 0] = index
        expected[str(i)] = want
    return expected


def make_coco_stuff(root: Path, size: int = 16, with_instances: bool = True) -> dict:
    rng = np.random.default_rng(4)
    expected = {}
    for split, folder, count in (("train", "train2017", 2), ("val", "val2017", 2)):
        for i in range(count):
            stem = f"{i + (0 if split == 'train' else 100):012d}"
            raw = blocky(rng, (size, size), [0, 5, 91, 181, 255])
            Image.fromarray(photo(rng, (size, size))).save(_mk(root / folder / f"{stem}.jpg"))
            save(root / "stuffthingmaps_trainval2017" / folder / f"{stem}.png", raw)
            inst = None
            if with_instances:
                inst = blocky(rng, (size, size), [0, 1, 2, 3])
                save(root / "instancemaps_trainval2017" / folder / f"{stem}.png", inst)
            want = raw.copy()
            want[raw == 255] = 182
            expected[stem] = (split, want, inst)
    return expected
