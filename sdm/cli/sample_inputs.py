"""Label (and instance) PNGs for ``sdm sample``: found, read and checked, with errors that name the file.

What a label PNG may be (decided by its PNG mode, never by guessing from the pixels):

- an **index map**: one channel of class ids 0..num_classes-1 (mode L, I, I;16 or 1), the prepared
  form after any dataset remap (e.g. ADE20K's label - 1). **Mode P (a palette PNG) is an index map
  too**: its palette indices are the class ids, as in the PASCAL VOC / Cityscapes-style files and
  ``sdm data prepare``'s readers; its colours are ignored. (To give a P-mode picture by its colours,
  convert it to RGB first.)
- a **colour map**: mode RGB or RGBA (fully opaque), drawn in the dataset's palette, which the
  checkpoint carries (meta.json ``palette``); each colour is mapped back to its class id
  (``sdm.label_images.colour_to_index``). Instance maps are always index maps.

At the model's size, or of any size with ``resize`` (nearest neighbour; another aspect ratio only
with ``crop``: ``sdm.label_images.fit_to_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdm.config.schema import ModelConfig
from sdm.errors import InputError
from sdm.label_images import colour_to_index, fit_to_size

SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")
COLOUR_MODES = ("RGB", "RGBA")
# Output names in the sample directory that a label file must not take.
RESERVED_STEMS = ("grid", "config")
# Largest label PNG decoded for --resize (the header is read first): data.max_image_pixels' default.
MAX_LABEL_PIXELS = 2**26


@dataclass
class LabelInputs:
    """The label maps to sample: one per file, in file-name order."""

    paths: list[Path]
    labels: np.ndarray  # int64 [N, H, W]
    instances: np.ndarray | None  # int64 [N, H, W] or None


@dataclass(frozen=True)
class MapOptions:
    """How label files of another form than the model's input are accepted.

    resize: maps of another size are resized (nearest); crop: another aspect ratio is centre-cropped
    to the model's first (implies resize); palette: the checkpoint's colours, for RGB label images.
    """

    resize: bool = False
    crop: bool = False
    palette: Sequence[Sequence[int]] | None = None
    max_pixels: int = MAX_LABEL_PIXELS


def list_pngs(path: Path, what: str) -> list[Path]:
    """A PNG file, or the *.png files of a directory (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
        if not files:
            raise InputError(f"{path}: no .png {what} files in this directory")
        return files
    if path.is_file():
        return [path]
    raise InputError(f"{path}: no such {what} file or directory")


def read_index_png(path: Path, what: str, model: ModelConfig | None = None,
                   options: MapOptions | None = None) -> np.ndarray:
    """A label/instance PNG as int64 [H, W] class (instance) ids at the model's size.

    Opened with the PNG decoder only (a file of another format is refused). With ``model``, the size
    is checked from the header, before decoding (a small file claiming a huge size): other than
    model.image_size is refused unless ``options.resize``/``crop`` (then up to ``max_pixels`` are
    decoded and resized). RGB/RGBA label files are mapped to ids with ``options.palette``.
    """
    options = options or MapOptions()
    fit = options.resize or options.crop
    try:
        with Image.open(path, formats=["PNG"]) as im:
            shape = (im.size[1], im.size[0])
            if model is not None and not fit:
                _check_shape(shape, path, what, model)
            if fit and shape[0] * shape[1] > options.max_pixels:
                raise InputError(f"{path}: {what} map is {shape[0]}x{shape[1]} (HxW), over the "
                                 f"{options.max_pixels} pixels read for --resize")
            im.load()
            mode, bands = im.mode, len(im.getbands())
            if mode in SINGLE_CHANNEL_MODES:
                array = np.asarray(im).astype(np.int64)
            elif mode in COLOUR_MODES and what == "label":
                array = _colour_label(np.asarray(im), path, mode, options.palette)
            else:
                raise InputError(f"{path}: a multi-channel PNG (mode {mode}, {bands} channels); expected a "
                                 f"single-channel {what} map (mode L, P or I;16) holding integer ids"
                                 + ("" if what != "label" else " or an RGB label image in the model's palette"))
    except InputError:
        raise
    except Exception as e:  # PIL raises several types for unreadable files
        raise InputError(f"{path}: cannot read as an image: {e}") from None
    if model is not None and array.shape != tuple(model.image_size):
        array = fit_to_size(array, tuple(model.image_size), crop=options.crop, where=str(path), what=what)
    return array


def _colour_label(pixels: np.ndarray, path: Path, mode: str,
                  palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    """uint8 [H, W, 3|4] colour label image -> int64 [H, W] class ids via the checkpoint's palette."""
    where = f"{path}: a multi-channel PNG (mode {mode}, {pixels.shape[-1]} channels) read as a colour label image"
    if palette is None:
        raise InputError(f"{where}, but the checkpoint carries no palette (meta.json 'palette') to map its "
                         "colours to classes; give a single-channel map of class ids instead")
    if mode == "RGBA":
        clear = pixels[..., 3] != 255
        if clear.any():
            y, x = (int(v) for v in np.argwhere(clear)[0])
            raise InputError(f"{where}: pixel (x={x}, y={y}) is not opaque (alpha {int(pixels[y, x, 3])}); a "
                             "colour label image must be fully opaque")
        pixels = pixels[..., :3]
    return colour_to_index(pixels, palette, where)


def _check_shape(shape: tuple[int, ...], path: Path, what: str, model: ModelConfig) -> None:
    h, w = model.image_size
    if tuple(shape) != (h, w):
        raise InputError(f"{path}: {what} map is {shape[0]}x{shape[1]} (HxW) but the model expects "
                         f"{h}x{w} (model.image_size of the checkpoint); pass --resize to resize it (nearest "
                         "neighbour; another aspect ratio also needs --crop)")


def read_label_inputs(labels: Path, instances: Path | None, model: ModelConfig,
                      options: MapOptions | None = None) -> LabelInputs:
    """Read and check every label PNG (and its instance PNG) against the checkpoint's model config.

    With a directory of instance maps, each label file is paired with the
    instance file of the same name; a single instance file needs a single label file.
    ``options``: resizing / cropping / the palette for colour label images (default: none of them).
    """
    paths = list_pngs(labels, "label")
    for p in paths:
        if p.stem in RESERVED_STEMS:
            raise InputError(f"{p}: a label file may not be called {p.name}: {p.stem}.png/.yaml is an output name")
    maps = []
    for p in paths:
        label = read_index_png(p, "label", model, options)
        top, low = int(label.max()), int(label.min())
        if top >= model.num_classes or low < 0:
            bad = top if top >= model.num_classes else low
            raise InputError(f"{p}: label value {bad} found; the model has {model.num_classes} classes, so labels "
                             f"must be in 0..{model.num_classes - 1}")
        maps.append(label)
    instance_maps = None
    if instances is not None:
        if instances.is_dir():
            inst_paths = [instances / p.name for p in paths]
            for lp, ip in zip(paths, inst_paths, strict=True):
                if not ip.is_file():
                    raise InputError(f"{ip}: missing: label map {lp} needs an instance map of the same name in "
                                     f"{instances}")
        else:
            inst_paths = list_pngs(instances, "instance")
            if len(paths) != 1:
                raise InputError(f"{instances}: one instance file given for {len(paths)} label maps; pass a "
                                 "directory of instance maps named like the label files")
        instance_maps = [read_index_png(ip, "instance", model, options) for ip in inst_paths]
    return LabelInputs(
        paths=paths,
        labels=np.stack(maps),
        instances=np.stack(instance_maps) if instance_maps is not None else None,
    )
