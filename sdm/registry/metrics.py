"""An evaluation's metrics.json, and which of its figures is the primary metric.

``sdm evaluate`` writes flat keys ``<metric>@<guidance scale>`` (``fid@1.5``,
``fsd@1.5``, ``miou@1.5``, ...) with numbers, a ``skipped`` mapping (metric ->
reason, e.g. FID without Inception weights) and ``primary_metric`` (the key it
considers primary). Promotion compares one key between two versions; this
module picks it and says which direction is better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdm.errors import InputError

# Metrics where a larger value is better; every other metric (FID, FSD, ...) is a distance.
HIGHER_IS_BETTER = ("miou", "accuracy", "feature_diversity", "diversity", "lpips_diversity")


class MetricsError(InputError):
    """A metrics file that cannot back a registration; the message names the file and the problem."""


@dataclass
class EvalMetrics:
    """The numeric figures of one metrics.json, with what evaluation skipped and why."""

    path: Path
    values: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    primary_metric: str | None = None

    def skip_reason(self, key: str) -> str | None:
        """Why ``key`` (``fid@1.5``) was not computed, if evaluation skipped it or its base name (``fid``)."""
        for name in (key, key.split("@", 1)[0]):
            if name in self.skipped:
                return self.skipped[name]
        return None

    def usable(self, key: str) -> bool:
        return key in self.values and self.skip_reason(key) is None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: str | Path) -> EvalMetrics:
    """Read an evaluation's metrics.json; a missing, unreadable or figure-less file is a ``MetricsError``."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no metrics file here; `sdm evaluate --checkpoint DIR --out OUT` writes "
                           "OUT/metrics.json, and a checkpoint is registered only with its evaluation")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MetricsError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    skipped_raw = data.get("skipped") or {}
    if isinstance(skipped_raw, list):
        skipped_raw = {str(name): "skipped" for name in skipped_raw}
    if not isinstance(skipped_raw, dict):
        raise MetricsError(f"{path}: 'skipped' should map metric names to reasons, got {skipped_raw!r}")
    skipped = {str(k): str(v) for k, v in skipped_raw.items()}
    primary = data.get("primary_metric")
    if isinstance(primary, dict):  # tolerate {"name": ..., "value": ...}
        primary = primary.get("name") or primary.get("key")
    if primary is not None and not isinstance(primary, str):
        raise MetricsError(f"{path}: 'primary_metric' should name a metric key, got {primary!r}")
    values = {k: float(v) for k, v in data.items() if _is_number(v)}
    if not values:
        raise MetricsError(f"{path}: holds no metric figures (numbers); evaluate the checkpoint first")
    return EvalMetrics(path=path, values=values, skipped=skipped, primary_metric=primary)


def lower_is_better(key: str) -> bool:
    base = key.split("@", 1)[0].lower()
    return not any(base == name or base.startswith(name + "_") for name in HIGHER_IS_BETTER)


def scale_keys(base: str, guidance_scale: float) -> list[str]:
    """The keys evaluation may use for ``base`` at a guidance scale: ``fid@1.5``; ``fid@1.0`` and ``fid@1``."""
    forms = [repr(float(guidance_scale)), f"{guidance_scale:g}"]
    return list(dict.fromkeys(f"{base}@{s}" for s in forms)) + [base]


def metric_candidates(metrics: EvalMetrics, setting: str, guidance_scale: float) -> list[str]:
    """The keys that may serve as the primary metric, in order of preference.

    ``setting`` is ``register.promotion.metric``: ``"auto"`` means metrics.json's own
    ``primary_metric``, then FID (computed only from ``evaluate.min_fid_samples``
    images), then KID (from ``evaluate.min_kid_samples``), then FSD, at
    ``guidance_scale``; any other value names a key (``fsd@1.5``) or a base name
    (``fsd``, looked up at ``guidance_scale``).
    """
    if setting != "auto":
        return [setting] if "@" in setting else scale_keys(setting, guidance_scale)
    keys = [metrics.primary_metric] if metrics.primary_metric else []
    for base in ("fid", "kid", "fsd"):
        keys += scale_keys(base, guidance_scale)
    return list(dict.fromkeys(keys))


def usable_candidates(metrics: EvalMetrics, setting: str, guidance_scale: float) -> list[str]:
    """:func:`metric_candidates` that this metrics file actually holds; a ``MetricsError`` when none."""
    keys = metric_candidates(metrics, setting, guidance_scale)
    usable = [k for k in keys if metrics.usable(k)]
    if not usable:
        reasons = [f"{k}: skipped ({metrics.skip_reason(k)})" for k in keys if metrics.skip_reason(k)]
        have = ", ".join(sorted(metrics.values)) or "none"
        why = f"; {'; '.join(reasons)}" if reasons else ""
        raise MetricsError(f"{metrics.path}: no usable primary metric for register.promotion.metric={setting!r} "
                           f"(looked for {', '.join(keys)}{why}); the file has: {have}")
    return usable
