"""Label maps as users have them -> the model's input: colour images back to class ids, and resizing.

Two conversions, both on arrays (the PNG reading and its errors' file names live with the caller):

- ``colour_to_index``: an RGB label image drawn in the dataset's palette (ADE20K's
  visualisations, ControlNet segmentation maps) -> class ids, exactly: every
  colour must be one of the palette's; the first pixel of a colour that is not
  is reported by its (x, y).
- ``fit_to_size``: a label or instance map of another size -> the model's size
  with nearest neighbour (cv2's, the one ``sdm data prepare`` resizes labels with,
  so a map resized here matches the prepared data). A different aspect ratio is
  refused unless ``crop``: then the largest centred window of the model's aspect
  is cut out first.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from sdm.errors import InputError


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int64 [...] as r << 16 | g << 8 | b (one integer per colour)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_to_index(rgb: np.ndarray, palette: Sequence[Sequence[int]], where: str) -> np.ndarray:
    """uint8 [H, W, 3] colour label image -> int64 [H, W] class ids, class c being ``palette[c]``.

    ``where`` names the input in errors (e.g. the file). A colour that is not in the palette is an
    error naming the colour and the (x, y) of its first pixel (row-major order); a colour that the
    palette gives to two classes is an error too (the image cannot say which class it meant).
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"{where}: expected an RGB image [H, W, 3], got shape {tuple(rgb.shape)}")
    table = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    keys = _pack(table)
    colours, inverse = np.unique(_pack(rgb), return_inverse=True)
    inverse = inverse.reshape(rgb.shape[:2])
    # searchsorted over the palette's sorted colours: class id per distinct colour in the image.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    slot = np.clip(np.searchsorted(sorted_keys, colours), 0, len(sorted_keys) - 1)
    found = sorted_keys[slot] == colours
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        y, x = (int(v) for v in np.argwhere(inverse == bad)[0])
        colour = tuple(int(v) for v in rgb[y, x])
        raise InputError(f"{where}: colour {colour} at pixel (x={x}, y={y}) is not in the model's palette "
                         f"({len(table)} classes); a colour label image may only use the palette's colours "
                         "(no anti-aliased edges, no overlays), or be a single-channel map of class ids")
    ids = order[slot]
    for i, colour_key in enumerate(colours):
        classes = np.flatnonzero(keys == colour_key)
        if len(classes) > 1:
            y, x = (int(v) for v in np.argwhere(inverse == i)[0])
            raise InputError(f"{where}: colour {tuple(int(v) for v in rgb[y, x])} (first at pixel (x={x}, y={y})) "
                             f"is the palette's colour of classes {classes.tolist()}; give this map as class ids "
                             "(a single-channel PNG)")
    return ids[inverse].astype(np.int64)


def centre_crop_box(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred window of ``shape`` = (h, w) with the aspect
    of ``size`` = (H, W); the whole map when the aspects agree to the pixel (one side within half a pixel)."""
    h, w = shape
    target_h, target_w = size
    if abs(h - w * target_h / target_w) <= 0.5 or abs(w - h * target_w / target_h) <= 0.5:
        return 0, 0, h, w  # the model's aspect to half a pixel (e.g. 513x1025 for 256x512)
    if w * target_h > h * target_w:  # wider than the model: cut the sides
        crop_h, crop_w = h, max(1, round(h * target_w / target_h))
    else:  # taller (or equal): cut top and bottom
        crop_h, crop_w = max(1, round(w * target_h / target_w)), w
    return (h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w


def fit_to_size(array: np.ndarray, size: tuple[int, int], *, crop: bool, where: str, what: str) -> np.ndarray:
    """int [h, w] label/instance ids -> int64 [H, W] at ``size`` = (H, W), nearest neighbour.

    A map whose aspect ratio is not the model's (more than rounding to a whole pixel) is refused
    unless ``crop``: then its centred window of the model's aspect is kept, the rest dropped.
    """
    h, w = array.shape
    top, left, crop_h, crop_w = centre_crop_box((h, w), size)
    if (crop_h, crop_w) != (h, w):
        if not crop:
            raise InputError(f"{where}: {what} map is {h}x{w} (HxW), another aspect ratio than the model's "
                             f"{size[0]}x{size[1]}; pass --crop to keep its centred {crop_h}x{crop_w} window "
                             "and resize that, or crop it yourself")
        array = array[top:top + crop_h, left:left + crop_w]
    if array.shape == tuple(size):
        return array.astype(np.int64)
    if int(array.max(initial=0)) > np.iinfo(np.int32).max or int(array.min(initial=0)) < 0:
        raise InputError(f"{where}: {what} ids must be in 0..{np.iinfo(np.int32).max} to be resized")
    # cv2 resizes int32, not int64; INTER_NEAREST as in sdm.data.transforms.resize_pair.
    resized = cv2.resize(np.ascontiguousarray(array, dtype=np.int32), (size[1], size[0]),
                         interpolation=cv2.INTER_NEAREST)
    return resized.astype(np.int64)
