"""Promotion: move the ``champion`` alias to a new version only when it is better.

A version's metrics are stored as tags ``metrics.<key>`` (see register.py), so
the champion's figure is read from its own tags. Both versions are compared on
the same key: the first of the candidate's usable primary-metric keys (FID,
then FSD, for ``"auto"``) that the champion also has. The decision and both
figures are recorded on the new version as ``promotion.*`` tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sdm.registry.metrics import EvalMetrics, lower_is_better
from sdm.tracking import metric_key

PROMOTED = "promoted"
KEPT = "kept"
NOT_REQUESTED = "not requested"


def metric_tag(key: str) -> str:
    """The version tag holding metric ``key``: ``fid@1.5`` -> ``metrics.fid_at_1.5``."""
    return f"metrics.{metric_key(key)}"


@dataclass
class PromotionDecision:
    """What promotion decided for a new version, and on which figures."""

    decision: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    reason: str

    def tags(self) -> dict[str, str]:
        return {
            "promotion.decision": self.decision,
            "promotion.metric": self.metric,
            "promotion.value": repr(self.value),
            "promotion.champion_value": "none" if self.champion_value is None else repr(self.champion_value),
            "promotion.champion_version": self.champion_version or "none",
            "promotion.reason": self.reason,
        }


def current_champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias is not set."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _tag_value(version: ModelVersion, key: str) -> float | None:
    raw = (version.tags or {}).get(metric_tag(key))
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def decide(metrics: EvalMetrics, keys: list[str], champion: ModelVersion | None, promote: bool) -> PromotionDecision:
    """Compare the candidate's first usable key the champion shares; promote only when strictly better.

    ``keys``: the candidate's usable primary-metric keys, in preference order (non-empty).
    """
    if champion is None:
        key = keys[0]
        value = metrics.values[key]
        if promote:
            return PromotionDecision(PROMOTED, key, value, None, None, "no champion yet")
        return PromotionDecision(NOT_REQUESTED, key, value, None, None, "no champion yet; promotion not requested")
    shared = [k for k in keys if _tag_value(champion, k) is not None]
    if not shared:
        key = keys[0]
        return PromotionDecision(
            KEPT if promote else NOT_REQUESTED, key, metrics.values[key], str(champion.version), None,
            f"champion v{champion.version} has none of {', '.join(keys)} to compare with",
        )
    key = shared[0]
    value, champ = metrics.values[key], _tag_value(champion, key)
    assert champ is not None
    lower = lower_is_better(key)
    better = value < champ if lower else value > champ
    direction = "lower" if lower else "higher"
    verdict = "better than" if better else "not better than"
    reason = f"{key} {value:.6g} is {verdict} champion v{champion.version}'s {champ:.6g} ({direction} is better)"
    if not promote:
        decision, reason = NOT_REQUESTED, reason + "; promotion not requested"
    else:
        decision = PROMOTED if better else KEPT
    return PromotionDecision(decision, key, value, str(champion.version), champ, reason)
