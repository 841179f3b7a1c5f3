"""Label (and instance) PNGs for ``sdm sample``: found, read and checked, with errors that name the file.

Label PNGs hold class indices 0..num_classes-1 in one channel (mode L, P with
its indices, I or I;16), at the model's size: the prepared form, after any
dataset remap (e.g. ADE20K's label - 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdm.config.schema import ModelConfig
from sdm.errors import InputError

SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")
# Output names in the sample directory that a label file must not take.
RESERVED_STEMS = ("grid", "config")


@dataclass
class LabelInputs:
    """The label maps to sample: one per file, in file-name order."""

    paths: list[Path]
    labels: np.ndarray  # int64 [N, H, W]
    instances: np.ndarray | None  # int64 [N, H, W] or None


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


def read_index_png(path: Path, what: str, model: ModelConfig | None = None) -> np.ndarray:
    """A single-channel PNG as int64 [H, W]; a multi-channel one is an error naming its mode.

    Opened with the PNG decoder only (a file of another format is refused); with ``model``, a size other
    than model.image_size is refused from the header, before decoding (a small file claiming a huge size).
    """
    try:
        with Image.open(path, formats=["PNG"]) as im:
            if model is not None:
                _check_shape((im.size[1], im.size[0]), path, what, model)
            im.load()
            mode, bands = im.mode, len(im.getbands())
            if mode not in SINGLE_CHANNEL_MODES:
                raise InputError(f"{path}: a multi-channel PNG (mode {mode}, {bands} channels); expected a "
                                f"single-channel {what} map (mode L, P or I;16) holding integer ids")
            return np.asarray(im).astype(np.int64)
    except InputError:
        raise
    except Exception as e:  # PIL raises several types for unreadable files
        raise InputError(f"{path}: cannot read as an image: {e}") from None


def _check_size(array: np.ndarray, path: Path, what: str, model: ModelConfig) -> None:
    _check_shape(array.shape, path, what, model)


def _check_shape(shape: tuple[int, ...], path: Path, what: str, model: ModelConfig) -> None:
    h, w = model.image_size
    if tuple(shape) != (h, w):
        raise InputError(f"{path}: {what} map is {shape[0]}x{shape[1]} (HxW) but the model expects "
                        f"{h}x{w} (model.image_size of the checkpoint)")


def read_label_inputs(labels: Path, instances: Path | None, model: ModelConfig) -> LabelInputs:
    """Read and check every label PNG (and its instance PNG) against the checkpoint's model config.

    With a directory of instance maps, each label file is paired with the
    instance file of the same name; a single instance file needs a single label file.
    """
    paths = list_pngs(labels, "label")
    for p in paths:
        if p.stem in RESERVED_STEMS:
            raise InputError(f"{p}: a label file may not be called {p.name}: {p.stem}.png/.yaml is an output name")
    maps = []
    for p in paths:
        label = read_index_png(p, "label", model)
        _check_size(label, p, "label", model)
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
        instance_maps = []
        for ip in inst_paths:
            inst = read_index_png(ip, "instance", model)
            _check_size(inst, ip, "instance", model)
            instance_maps.append(inst)
    return LabelInputs(
        paths=paths,
        labels=np.stack(maps),
        instances=np.stack(instance_maps) if instance_maps is not None else None,
    )
