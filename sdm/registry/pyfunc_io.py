"""Turn what the MLflow pyfunc receives into ``sdm.sampling.generate`` arguments.

MLflow hands the model a DataFrame with one row per image (see
``sdm.registry.signature``): ``labels`` cells of nested lists or 2-D arrays and
an optional ``instances`` column. Problems raise ``ModelInputError`` (a
ValueError) naming the row and what was wrong; the pyfunc turns it into an
MLflow "invalid parameter" error (HTTP 400 when served).

Every request is also held to the model's ``RequestLimits`` (rows, steps,
guidance range, samplers): set from ``register.serving`` at registration and
stored in the model version as MLflow ``model_config`` (mlflow/README.md:
Request limits), so a served model cannot be asked for unbounded work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdm.config.load import from_dict
from sdm.config.schema import Config, SampleConfig, ServingConfig
from sdm.errors import InputError
from sdm.registry.signature import INSTANCES, LABELS


class ModelInputError(InputError):
    """A request the registered model cannot take; the message names the row and the problem."""


# The key of the limits in the model version's MLflow model_config.
LIMITS_KEY = "request_limits"
# torch.Generator.manual_seed takes seeds below 2**64; image i uses seed + i.
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RequestLimits:
    """What one request to the served model may ask for (``register.serving`` at registration)."""

    max_rows: int
    max_steps: int
    min_guidance_scale: float
    max_guidance_scale: float
    samplers: tuple[str, ...]

    @classmethod
    def from_serving(cls, serving: ServingConfig) -> RequestLimits:
        return cls(max_rows=serving.max_rows, max_steps=serving.max_steps,
                   min_guidance_scale=serving.min_guidance_scale, max_guidance_scale=serving.max_guidance_scale,
                   samplers=tuple(serving.samplers))

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any] | None) -> RequestLimits:
        """The limits stored at registration; a version registered before limits existed gets the defaults."""
        stored = (model_config or {}).get(LIMITS_KEY)
        if not stored:
            return cls.from_serving(ServingConfig())
        # Through the config loader: a hand-edited MLmodel gets the same checks (and messages) as params.yaml.
        return cls.from_serving(from_dict(dict(stored), ServingConfig, "register.serving"))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "samplers": list(self.samplers)}


def serving_model_config(config: Config) -> dict[str, Any]:
    """The ``model_config`` that ``sdm register`` stores with a version: its request limits.

    Checks that the limits admit at least one request and the model's own defaults (``sample``), so that a
    registered model never refuses a request that sends no params. Raises ``ModelInputError`` naming the keys.
    """
    limits = RequestLimits.from_serving(config.register.serving)
    if not limits.samplers:
        raise ModelInputError("register.serving.samplers: empty; allow at least the default sampler "
                              f"sample.sampler={config.sample.sampler!r}")
    if limits.min_guidance_scale > limits.max_guidance_scale:
        raise ModelInputError(f"register.serving.min_guidance_scale={limits.min_guidance_scale} is above "
                              f"register.serving.max_guidance_scale={limits.max_guidance_scale}")
    try:
        sampling_options(None, config.sample, limits)
    except ModelInputError as e:
        raise ModelInputError(f"the sample section's defaults are outside register.serving: {e}") from None
    return {LIMITS_KEY: limits.to_dict()}


def check_row_count(rows: int, limits: RequestLimits) -> None:
    """Refuse a request of more rows than ``limits.max_rows`` before any map is parsed."""
    if rows > limits.max_rows:
        raise ModelInputError(f"{rows} rows (label maps) in one request; this model takes at most "
                              f"{limits.max_rows} per request (register.serving.max_rows): split the request")


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


def parse_model_input(
    model_input: Any, config: Config, limits: RequestLimits | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A DataFrame of rows (``labels`` + optional ``instances``) -> labels [N, H, W] int64, instances or None.

    Also takes a plain integer array [N, H, W] of label maps (no instances).
    Label values are checked against num_classes by ``generate``. With ``limits``, more than
    ``limits.max_rows`` rows are refused first.
    """
    size = list(config.model.image_size)
    if isinstance(model_input, np.ndarray):
        if model_input.ndim != 3:
            raise ModelInputError(f"labels: expected [N, H, W] label maps, got shape {list(model_input.shape)}")
        if limits is not None:
            check_row_count(len(model_input), limits)
        return np.stack([_as_map(m, LABELS, i, size) for i, m in enumerate(model_input)]), None
    columns = getattr(model_input, "columns", None)
    if columns is None:
        raise ModelInputError(f"expected rows with a '{LABELS}' column (and optional '{INSTANCES}'), "
                              f"got {type(model_input).__name__}")
    if LABELS not in columns:
        raise ModelInputError(f"no '{LABELS}' column; got columns {list(columns)}")
    if len(model_input) == 0:
        raise ModelInputError("no rows: send at least one label map")
    if limits is not None:
        check_row_count(len(model_input), limits)
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


def _number(params: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    value = params.get(name, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelInputError(f"param {name}={value!r} is not a{'n integer' if kind is int else ' number'}") from None


def speed_options(sample: SampleConfig) -> dict[str, Any]:
    """``generate``'s inference speed keywords from the ``sample`` section the model carries (not per request)."""
    return {"precision": sample.precision, "compile": sample.compile, "channels_last": sample.channels_last,
            "cache_budget_gb": sample.cache_budget_gb}


def sampling_options(params: dict[str, Any] | None, sample: SampleConfig, limits: RequestLimits | None = None,
                     diffusion_steps: int | None = None) -> dict[str, Any]:
    """``generate`` keyword options from request params over the model's ``sample`` defaults.

    Checked against ``limits`` (the model's request limits; the defaults when None) and the model's
    ``diffusion_steps`` (a respaced schedule cannot have more steps than the trained one).
    """
    limits = limits or RequestLimits.from_serving(ServingConfig())
    params = dict(params or {})
    opts = {
        "guidance_scale": _number(params, "guidance_scale", sample.guidance_scale, float),
        "sampler": str(params.get("sampler", sample.sampler)),
        "steps": _number(params, "steps", sample.steps, int),
        "seed": _number(params, "seed", sample.seed, int),
        # DDIM's and ``distilled``'s noise; the model's own (a student's: 1) unless the request names one.
        "eta": _number(params, "eta", sample.eta, float),
    }
    if opts["sampler"] not in _SAMPLER_CHOICES:
        raise ModelInputError(f"param sampler={opts['sampler']!r} is not one of {', '.join(_SAMPLER_CHOICES)}")
    if opts["sampler"] not in limits.samplers:
        raise ModelInputError(f"param sampler={opts['sampler']!r} is not allowed by this model; it serves "
                              f"{', '.join(limits.samplers)} (register.serving.samplers)")
    if opts["steps"] < 1:
        raise ModelInputError(f"param steps={opts['steps']} must be >= 1")
    if opts["steps"] > limits.max_steps:
        raise ModelInputError(f"param steps={opts['steps']} is above this model's limit of {limits.max_steps} "
                              "(register.serving.max_steps)")
    if diffusion_steps is not None and opts["steps"] > diffusion_steps:
        raise ModelInputError(f"param steps={opts['steps']} is above the model's {diffusion_steps} diffusion steps")
    g = opts["guidance_scale"]
    if not math.isfinite(g) or not limits.min_guidance_scale <= g <= limits.max_guidance_scale:
        raise ModelInputError(f"param guidance_scale={g} is outside this model's range [{limits.min_guidance_scale}, "
                              f"{limits.max_guidance_scale}] (register.serving.min/max_guidance_scale)")
    if not 0 <= opts["eta"] <= 1:  # also refuses nan
        raise ModelInputError(f"param eta={opts['eta']} must be in [0, 1]")
    if not 0 <= opts["seed"] <= _MAX_SEED:
        raise ModelInputError(f"param seed={opts['seed']} must be in [0, 2**63 - 1]")
    return opts
