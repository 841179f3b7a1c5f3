"""Decode and check one source example: image, label map (remapped), optional instance map.

Every check that needs the pixels happens here, so ``sdm data validate`` and
``sdm data prepare`` apply exactly the same rules. A failed check raises
``ItemProblem`` carrying a ``Problem`` that names the file.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdm.data.discover import Item
from sdm.data.formats import Format
from sdm.data.problems import Problem


class ItemProblem(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


@dataclass
class LoadedItem:
    item: Item
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # int64 [h, w], class indices in [0, num_classes)
    instance: np.ndarray | None  # int64 [h, w] instance ids, or None
    # sha256 of every source file read, by path relative to the source (for the fingerprint).
    digests: dict[str, str]


def _open(path: Path, rel: str, kind: str, item_id: str, digests: dict[str, str]) -> Image.Image:
    try:
        data = path.read_bytes()
        digests[rel] = hashlib.sha256(data).hexdigest()
        im = Image.open(io.BytesIO(data))
        im.load()  # decodes everything: truncated files fail here
        return im
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ItemProblem(Problem(kind, item_id, str(path), f"cannot decode: {e}")) from None


def _index_map(im: Image.Image, path: Path, kind: str, item_id: str) -> np.ndarray:
    """A single-channel PNG as int64 (palette PNGs give their indices)."""
    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise ItemProblem(Problem(
            kind, item_id, str(path),
            f"multi-channel {kind.split('_')[1]} (mode {im.mode}, {len(im.getbands())} channels); "
            "expected a single-channel PNG of integer ids",
        ))
    return np.asarray(im).astype(np.int64)


def remap_labels(raw: np.ndarray, fmt: Format, num_classes: int) -> tuple[np.ndarray, dict[int, int]]:
    """Raw values -> class indices with the format's offset and map.

    Returns (labels int64, {raw value: pixel count} for values outside [0, num_classes)).
    """
    # A lookup table over the raw values; values outside 0..65535 (32-bit PNGs) are never classes.
    wild = (raw < 0) | (raw > 65535)
    safe = np.where(wild, 0, raw) if wild.any() else raw
    top = int(safe.max()) if safe.size else 0
    lut = np.arange(top + 1, dtype=np.int64) + fmt.label_offset
    for src, dst in fmt.label_map.items():
        if src <= top:
            lut[src] = dst
    labels = lut[safe]
    bad = (labels < 0) | (labels >= num_classes) | wild
    out_of_range: dict[int, int] = {}
    if bad.any():
        values, counts = np.unique(raw[bad], return_counts=True)
        out_of_range = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    return labels, out_of_range


def merge_parts(masks: list[tuple[int, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Per-part binary masks -> one label map; later parts (higher class index) overwrite earlier ones."""
    label = np.zeros(shape, dtype=np.int64)
    for index, mask in sorted(masks, key=lambda pm: pm[0]):
        label[mask] = index
    return label


def _read_part(path: Path, rel: str, item_id: str, digests: dict[str, str]) -> np.ndarray:
    im = _open(path, rel, "unreadable_label", item_id, digests)
    arr = np.asarray(im)
    # Part masks are binary; some releases store them as RGB: any non-zero channel is the part.
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] * b[1] == a[1] * b[0]


def load_item(item: Item, fmt: Format, source: Path, num_classes: int) -> LoadedItem:
    """Decode and check one example. Raises ``ItemProblem`` (the first problem found)."""
    digests: dict[str, str] = {}
    image_path = source / item.image
    im = _open(image_path, item.image, "unreadable_image", item.id, digests)
    image = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]

    if item.parts:
        masks = []
        shape = None
        for index, rel in item.parts:
            mask = _read_part(source / rel, rel, item.id, digests)
            if shape is None:
                shape = mask.shape
            elif mask.shape != shape:
                raise ItemProblem(Problem("size_mismatch", item.id, str(source / rel),
                                          f"part mask is {mask.shape[1]}x{mask.shape[0]}, other parts of "
                                          f"this id are {shape[1]}x{shape[0]}"))
            masks.append((index, mask))
        assert shape is not None
        raw = merge_parts(masks, shape)
        label_path = source / item.parts[0][1]
    else:
        assert item.label is not None
        label_path = source / item.label
        raw = _index_map(_open(label_path, item.label, "unreadable_label", item.id, digests),
                         label_path, "multichannel_label", item.id)

    lh, lw = raw.shape
    if (fmt.same_size and (lh, lw) != (h, w)) or (not fmt.same_size and not _same_aspect((lh, lw), (h, w))):
        want = "the same size" if fmt.same_size else "the same aspect ratio"
        raise ItemProblem(Problem("size_mismatch", item.id, str(label_path),
                                  f"label is {lw}x{lh} but the image {image_path.name} is {w}x{h} (need {want})"))
    labels, out_of_range = remap_labels(raw, fmt, num_classes)
    if out_of_range:
        values = ", ".join(f"{v} ({c} px)" for v, c in sorted(out_of_range.items()))
        raise ItemProblem(Problem("label_out_of_range", item.id, str(label_path),
                                  f"raw label values outside the {num_classes} classes of {fmt.name!r}: {values}"))

    instance = None
    if item.instance is not None:
        inst_path = source / item.instance
        instance = _index_map(_open(inst_path, item.instance, "unreadable_instance", item.id, digests),
                              inst_path, "multichannel_instance", item.id)
        if instance.shape != raw.shape:
            raise ItemProblem(Problem("size_mismatch", item.id, str(inst_path),
                                      f"instance map is {instance.shape[1]}x{instance.shape[0]} but the label is "
                                      f"{lw}x{lh}"))
    return LoadedItem(item=item, image=image, label=labels, instance=instance, digests=digests)
