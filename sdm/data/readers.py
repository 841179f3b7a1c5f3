"""Decode and check one source example: image, label map (remapped), optional instance map.

Every check that needs the pixels happens here, so ``sdm data validate`` and
``sdm data prepare`` apply exactly the same rules. A failed check raises
``ItemProblem`` carrying a ``Problem`` that names the file.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdm.config.schema import DataConfig
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


# The only decoders a source file is opened with, by its extension (discovery matched the extension
# already): a file is decoded by the format its name declares, never by whichever of PIL's ~40 plugins
# recognises its bytes.
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
# Magic numbers, only to name what a refused file really is.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"))
DEFAULT_MAX_IMAGE_PIXELS: int = DataConfig().max_image_pixels


def _sniff(data: bytes) -> str | None:
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def _too_large(size: str, pixels: int, max_pixels: int) -> str:
    return (f"the header says {size} = {_mpx(pixels)}, above data.max_image_pixels = {max_pixels} "
            f"({_mpx(max_pixels)}); refused before decoding (raise data.max_image_pixels to accept it)")


def open_checked(data: bytes, path: Path, max_pixels: int) -> Image.Image:
    """Decode ``data`` (the bytes of ``path``) with the decoder its extension names, within ``max_pixels``.

    The size comes from the header (``Image.open`` is lazy) and is checked before any pixel is decoded, so
    a small file claiming a huge image (a decompression bomb) costs nothing. Raises ``ValueError`` with
    the reason (wrong format for the extension, too many pixels, undecodable).
    """
    want = PIL_FORMATS.get(path.suffix.lower())
    if want is None:
        raise ValueError(f"extension {path.suffix!r} is not an image format sdm reads ({', '.join(PIL_FORMATS)})")
    try:
        im = Image.open(io.BytesIO(data), formats=[want])
    except Image.DecompressionBombError as e:  # over PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS)
        m = re.search(r"\((\d+) pixels\)", str(e))
        if m and int(m.group(1)) > max_pixels:
            raise ValueError(_too_large(f"{m.group(1)} px", int(m.group(1)), max_pixels)) from None
        raise ValueError(f"too large to decode: {e}") from None
    except Exception as e:  # UnidentifiedImageError, or a plugin's SyntaxError / OSError on a bad header
        actual = _sniff(data)
        if actual not in (want, None):
            raise ValueError(f"cannot decode: the file is {actual}, not {want} as its extension {path.suffix!r} "
                             "says; only files whose content matches their extension are read") from None
        raise ValueError(f"cannot decode: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ValueError(_too_large(f"{w}x{h}", w * h, max_pixels))
    try:
        im.load()  # decodes everything: truncated files fail here
    except Exception as e:  # OSError "image file is truncated", a decoder's ValueError, ...
        raise ValueError(f"cannot decode: {e}") from None
    return im


def _open(path: Path, rel: str, kind: str, item_id: str, digests: dict[str, str], max_pixels: int) -> Image.Image:
    try:
        data = path.read_bytes()
        digests[rel] = hashlib.sha256(data).hexdigest()
        return open_checked(data, path, max_pixels)
    except ValueError as e:
        raise ItemProblem(Problem(kind, item_id, str(path), str(e))) from None
    except Exception as e:  # OSError on reading, or a decoder's error on truncated / corrupt pixel data
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


def _read_part(path: Path, rel: str, item_id: str, digests: dict[str, str], max_pixels: int) -> np.ndarray:
    im = _open(path, rel, "unreadable_label", item_id, digests, max_pixels)
    arr = np.asarray(im)
    # Part masks are binary; some releases store them as RGB: any non-zero channel is the part.
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] * b[1] == a[1] * b[0]


def load_item(item: Item, fmt: Format, source: Path, num_classes: int, *,
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedItem:
    """Decode and check one example. Raises ``ItemProblem`` (the first problem found).

    ``max_pixels`` (``data.max_image_pixels``) bounds every file's W x H, checked from its header.
    """
    digests: dict[str, str] = {}
    image_path = source / item.image
    im = _open(image_path, item.image, "unreadable_image", item.id, digests, max_pixels)
    image = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]

    if item.parts:
        masks = []
        shape = None
        for index, rel in item.parts:
            mask = _read_part(source / rel, rel, item.id, digests, max_pixels)
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
        raw = _index_map(_open(label_path, item.label, "unreadable_label", item.id, digests, max_pixels),
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
        instance = _index_map(_open(inst_path, item.instance, "unreadable_instance", item.id, digests,
                                    max_pixels),
                              inst_path, "multichannel_instance", item.id)
        if instance.shape != raw.shape:
            raise ItemProblem(Problem("size_mismatch", item.id, str(inst_path),
                                      f"instance map is {instance.shape[1]}x{instance.shape[0]} but the label is "
                                      f"{lw}x{lh}"))
    return LoadedItem(item=item, image=image, label=labels, instance=instance, digests=digests)
