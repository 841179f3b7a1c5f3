"""The dataset formats registry: every dataset specific is data here, not code.

A format says where images, labels and instance maps live (path templates
relative to the source folder), which splits the release has, the class list
(a JSON file in ``sdm/data/classes/`` or ``classes.json`` in the source), and
how raw label values map to class indices. Adding a format is adding an entry
to ``FORMATS``; see data/README.md.

Template placeholders: ``{split}`` (the release's split folder, from
``splits``), ``{key}`` (the pairing key: file name without the role's suffix),
``{part}`` (a CelebAMask-HQ part name); any other ``{name}`` matches one path
component (e.g. the Cityscapes city).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sdm.data.palette import distinct_palette
from sdm.errors import InputError
from sdm.suggest import did_you_mean

CLASSES_DIR = Path(__file__).parent / "classes"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class FormatError(InputError):
    """An unknown format, or a source whose class list is missing or malformed."""


@dataclass(frozen=True)
class Role:
    """Where one kind of file lives: a template without extension + the accepted extensions."""

    template: str
    extensions: tuple[str, ...] = (".png",)


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    image: Role
    # A single class-index PNG per image, or (label_parts) one binary mask per class.
    label: Role | None
    label_parts: Role | None = None
    instance: Role | None = None
    # True: every image must have an instance map; False: used when the folder exists.
    instances_required: bool = False
    # Our split name -> the release's split folder; None: no official split
    # (a reproducible one is drawn from data.val_fraction and data.split_seed).
    splits: MappingProxyType | None = None
    # A file in sdm/data/classes/, or "" for classes.json in the source folder.
    classes: str = ""
    # Raw label value v becomes v + label_offset, except the values in label_map.
    label_offset: int = 0
    label_map: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # "stem": keys compare as strings; "int": as integers (CelebAMask-HQ masks are zero-padded).
    key: str = "stem"
    # True: image and label have the same size; False: the same aspect ratio is enough.
    same_size: bool = True


def _splits(**mapping: str) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format(
            name="folder",
            description="images/*.{jpg,png} + labels/*.png (+ optional instances/*.png) + classes.json, paired by stem",
            image=Role("images/{key}", IMAGE_EXTENSIONS),
            label=Role("labels/{key}"),
            instance=Role("instances/{key}"),
        ),
        Format(
            name="ade20k",
            description="ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png; 151 classes",
            image=Role("images/{split}/{key}", (".jpg",)),
            label=Role("annotations/{split}/{key}"),
            splits=_splits(train="training", val="validation"),
            classes="ade20k.json",
            label_offset=-1,
            label_map=MappingProxyType({0: 150}),
        ),
        Format(
            name="cityscapes",
            description="leftImg8bit/{train,val}/<city>/*_leftImg8bit.png + gtFine labelIds/instanceIds; 35 classes",
            image=Role("leftImg8bit/{split}/{city}/{key}_leftImg8bit"),
            label=Role("gtFine/{split}/{city}/{key}_gtFine_labelIds"),
            instance=Role("gtFine/{split}/{city}/{key}_gtFine_instanceIds"),
            instances_required=True,
            splits=_splits(train="train", val="val"),
            classes="cityscapes.json",
        ),
        Format(
            name="celebamask-hq",
            description="CelebA-HQ-img/<id>.jpg + CelebAMask-HQ-mask-anno/<id//2000>/<id:05d>_<part>.png; 19 classes",
            image=Role("CelebA-HQ-img/{key}", (".jpg", ".png")),
            label=None,
            label_parts=Role("CelebAMask-HQ-mask-anno/{group}/{key}_{part}"),
            classes="celebamask-hq.json",
            key="int",
            same_size=False,
        ),
        Format(
            name="coco-stuff",
            description="train2017/, val2017/ + stuffthingmaps_trainval2017/{train2017,val2017}/*.png; 183 classes",
            image=Role("{split}/{key}", (".jpg",)),
            label=Role("stuffthingmaps_trainval2017/{split}/{key}"),
            # Optional: instance-id PNGs (e.g. drawn from the COCO instance annotations).
            instance=Role("instancemaps_trainval2017/{split}/{key}"),
            splits=_splits(train="train2017", val="val2017"),
            classes="coco-stuff.json",
            label_map=MappingProxyType({255: 182}),
        ),
    ]
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown data format {name!r}{did_you_mean(name, FORMATS)}; "
                          f"known formats: {', '.join(FORMATS)}") from None


@dataclass(frozen=True)
class ClassInfo:
    names: list[str]
    palette: list[list[int]]
    # Classes whose pixels carry instance ids (informational; from classes.json).
    instance_classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _parse_classes(data: Any, where: str) -> ClassInfo:
    if isinstance(data, list):
        data = {"names": data}
    if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
        raise FormatError(f'{where}: expected {{"names": [...], "palette": [[r, g, b], ...] (optional)}}')
    names = [str(n) for n in data["names"]]
    palette = data.get("palette") or distinct_palette(len(names))
    if len(palette) != len(names) or any(
        not isinstance(c, list) or len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    ):
        raise FormatError(f"{where}: 'palette' must list one [r, g, b] (0..255) per class ({len(names)} classes)")
    return ClassInfo(names=names, palette=[list(c) for c in palette],
                     instance_classes=[str(n) for n in data.get("instance_classes", [])])


def load_classes(fmt: Format, source: str | Path) -> ClassInfo:
    """The format's classes: its bundled list, or ``classes.json`` in the source folder."""
    path = CLASSES_DIR / fmt.classes if fmt.classes else Path(source) / "classes.json"
    if not path.is_file():
        raise FormatError(
            f"{path}: missing; the {fmt.name!r} format needs a classes.json listing the class names "
            '(e.g. {"names": ["sky", "grass"], "palette": [[70, 130, 180], [80, 160, 60]]})'
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: cannot read the class list: {e}") from e
    return _parse_classes(data, str(path))
