"""Turn what the MLflow pyfunc receives into ``sdm.sampling.generate`` arguments.

MLflow hands the model a DataFrame with one row per image (see
``sdm.registry.signature``): ``labels`` cells of nested lists or 2-D arrays and
an optional ``instances`` column. Problems raise ``ModelInputError`` (a
ValueError) naming the row and what was wrong; the pyfunc turns it into an
MLflow "invalid parameter" error (HTTP 400 when served).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from sdm.config.schema import Config, SampleConfig
from sdm.errors import InputError
from sdm.registry.signature import INSTANCES, LABELS


class ModelInputError(InputError):
    """A request the registered model cannot take; the message names the row and the problem."""


def _missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _as_map(cell: Any, column: str, row: int, size: list[int]) -> np.ndarray:
    try:
        arr = np.asarray(cell)
    except ValueError:
        raise ModelInputError(f"{column} row {row}: ragged nested lists; expected one [H, W] map") from None
    if arr.dtype == object:
        raise ModelInputError(f"{column} row {row}: ragged or non-numeric nested lists; expected one [H, W] map")
    if arr.ndim != 2:
        raise ModelInputError(f"{column} row {row}: expected a 2-D map [H, W], got shape {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ModelInputError(f"{column} row {row}: expected integers, got dtype {arr.dtype}")
    if list(arr.shape) != list(size):
        raise ModelInputError(f"{column} row {row}: map is {arr.shape[0]}x{arr.shape[1]} (HxW) but the model "
                              f"takes {size[0]}x{size[1]} (model.image_size)")
    return arr.astype(np.int64)


def parse_model_input(model_input: Any, config: Config) -> tuple[np.ndarray, np.ndarray | None]:
    """A DataFrame of rows (``labels`` + optional ``instances``) -> labels [N, H, W] int64, instances or None.

    Also takes a plain integer array [N, H, W] of label maps (no instances).
    Label values are checked against num_classes by ``generate``.
    """
    size = list(config.model.image_size)
    if isinstance(model_input, np.ndarray):
        if model_input.ndim != 3:
            raise ModelInputError(f"labels: expected [N, H, W] label maps, got shape {list(model_input.shape)}")
        return np.stack([_as_map(m, LABELS, i, size) for i, m in enumerate(model_input)]), None
    columns = getattr(model_input, "columns", None)
    if columns is None:
        raise ModelInputError(f"expected rows with a '{LABELS}' column (and optional '{INSTANCES}'), "
                              f"got {type(model_input).__name__}")
    if LABELS not in columns:
        raise ModelInputError(f"no '{LABELS}' column; got columns {list(columns)}")
    if len(model_input) == 0:
        raise ModelInputError("no rows: send at least one label map")
    labels = np.stack([_as_map(c, LABELS, i, size) for i, c in enumerate(model_input[LABELS])])
    if INSTANCES not in columns:
        return labels, None
    cells = list(model_input[INSTANCES])
    given = [not _missing(c) for c in cells]
    if not any(given):
        return labels, None
    if not all(given):
        missing = [i for i, g in enumerate(given) if not g]
        raise ModelInputError(f"{INSTANCES}: given for some rows but missing for rows {missing}; "
                              "send instance maps for every row or for none")
    return labels, np.stack([_as_map(c, INSTANCES, i, size) for i, c in enumerate(cells)])


_SAMPLERS = dataclasses.fields(SampleConfig)
_SAMPLER_CHOICES = next(f.metadata["choices"] for f in _SAMPLERS if f.name == "sampler")


def sampling_options(params: dict[str, Any] | None, sample: SampleConfig) -> dict[str, Any]:
    """``generate`` keyword options from request params over the model's ``sample`` defaults."""
    params = dict(params or {})
    opts = {
        "guidance_scale": float(params.get("guidance_scale", sample.guidance_scale)),
        "sampler": str(params.get("sampler", sample.sampler)),
        "steps": int(params.get("steps", sample.steps)),
        "seed": int(params.get("seed", sample.seed)),
    }
    if opts["sampler"] not in _SAMPLER_CHOICES:
        raise ModelInputError(f"param sampler={opts['sampler']!r} is not one of {', '.join(_SAMPLER_CHOICES)}")
    if opts["steps"] < 1:
        raise ModelInputError(f"param steps={opts['steps']} must be >= 1")
    if not math.isfinite(opts["guidance_scale"]) or opts["guidance_scale"] < 0:
        raise ModelInputError(f"param guidance_scale={opts['guidance_scale']} must be a number >= 0")
    return opts
