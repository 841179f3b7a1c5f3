"""Input checks for ``sdm evaluate``: checkpoint against data, and the split to evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdm.config import Config
from sdm.errors import InputError


class EvaluationInputError(InputError):
    """Checkpoint, data or settings that cannot be evaluated together; the message says which and why."""


def check_compatible(checkpoint: Path, ckpt_config: Config, data: Path, manifest: Any, meta: dict) -> list[str]:
    """Raise on a class-count or image-size mismatch; return warnings (e.g. renamed classes)."""
    model = ckpt_config.model
    if model.num_classes != manifest.num_classes:
        raise EvaluationInputError(
            f"classes differ: checkpoint {checkpoint} was trained for {model.num_classes} classes "
            f"(model.num_classes in its config.json) but the data in {data} has {manifest.num_classes} "
            "(its manifest); evaluate a checkpoint on the dataset it was trained on"
        )
    if list(model.image_size) != list(manifest.image_size):
        raise EvaluationInputError(
            f"image size differs: checkpoint {checkpoint} generates {model.image_size[0]}x{model.image_size[1]} "
            f"but the data in {data} is prepared at {manifest.image_size[0]}x{manifest.image_size[1]} (HxW); "
            "prepare the data at the model's size (data.image_size)"
        )
    warnings = []
    names = meta.get("class_names")
    if names and list(names) != list(manifest.class_names):
        first = next((i for i, (a, b) in enumerate(zip(names, manifest.class_names, strict=False)) if a != b),
                     min(len(names), len(manifest.class_names)))
        warnings.append(f"class names in {checkpoint}/meta.json differ from the data's manifest from class {first} on")
    if model.use_instance and not manifest.has_instances:
        warnings.append(f"the model uses instance edges but {data} has no instance maps: "
                        "edges come from the label maps")
    return warnings


def check_split(data: Path, split: str, manifest: Any) -> int:
    """The number of items in ``split``; a clear error when the split is unknown or empty."""
    counts = dict(manifest.counts)
    listed = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
    if split not in counts:
        raise EvaluationInputError(f"{data} has no split {split!r} (items per split: {listed}); "
                                   "choose one with --split")
    if int(counts[split]) == 0:
        raise EvaluationInputError(
            f"split {split!r} of {data} is empty (items per split: {listed}); choose another with --split "
            "or prepare the data with a validation fraction (data.val_fraction)"
        )
    return int(counts[split])
