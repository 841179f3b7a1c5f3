"""Promotion: move the ``champion`` alias to a new version only when the rule says it is better.

The rule (``register.promotion``, :mod:`sdm.registry.rule`): a primary metric
whose direction follows the metric (lower is better for distances), a minimum
relative improvement (0 = strictly better) and guard metrics that may not get
worse by more than a stated fraction. A challenger better on the primary
metric but worse than a guard allows is kept out, the reason naming the guard.

The champion's figures should come from an evaluation on equal terms: the same
data version, label maps, seeds, sampler and evaluator as the challenger
(:mod:`sdm.registry.champion`, what ``retrain`` does). ``sdm register`` alone
has no such evaluation and falls back to the figures tagged on the champion at
its own registration (``metrics.*``); ``promotion.basis`` says which it was.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sdm.registry.metrics import EvalMetrics, lower_is_better
from sdm.registry.rule import PromotionRule
from sdm.tracking import metric_key

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

PROMOTED = "promoted"
KEPT = "kept"
NOT_REQUESTED = "not requested"

# promotion.basis: where the champion's figures came from.
EQUAL_TERMS = "equal terms"
RECORDED = "recorded tags"
NO_CHAMPION = "no champion"


def metric_tag(key: str) -> str:
    """The version tag holding metric ``key``: ``fid@1.5`` -> ``metrics.fid_at_1.5``."""
    return f"metrics.{metric_key(key)}"


def champion_metric_tag(key: str) -> str:
    """The new version's tag holding the champion's figure for ``key``: ``champion.metrics.fid_at_1.5``."""
    return f"champion.{metric_tag(key)}"


@dataclass
class ChampionFigures:
    """The champion's figures to compare with, and where they came from.

    ``basis``: ``EQUAL_TERMS`` (evaluated on the challenger's data and
    settings, ``data_version`` says which) or ``RECORDED`` (its own ``metrics.*``
    tags). ``unusable``: why the champion could not be evaluated on this data
    (e.g. its classes differ), with ``values`` empty.
    """

    version: str
    values: dict[str, float]
    basis: str = EQUAL_TERMS
    data_version: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    unusable: str | None = None

    @classmethod
    def from_version(cls, version: ModelVersion) -> ChampionFigures:
        """The figures a version's ``metrics.*`` tags recorded at its registration."""
        values = {}
        for tag, raw in (version.tags or {}).items():
            if not tag.startswith("metrics."):
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isfinite(value):
                values[tag] = value
        return cls(version=str(version.version), values=values, basis=RECORDED,
                   data_version=(version.tags or {}).get("lineage.data_version"))

    @classmethod
    def recorded_on(cls, tags: dict[str, str], champion: ModelVersion | None) -> ChampionFigures | None:
        """The champion's figures a registration recorded on its version (``promotion.*``, ``champion.*`` tags).

        On equal terms they are the ``champion.metrics.*`` tags; otherwise the champion's own
        ``metrics.*`` tags (``champion``: that version, None when it is gone). None without a champion.
        """
        version = tags.get("promotion.champion_version", "none")
        if version == "none":
            return None
        if tags.get("promotion.basis") == EQUAL_TERMS:
            prefix = "champion."
            values = {}
            for tag, raw in tags.items():
                if tag.startswith(prefix + "metrics."):
                    with contextlib.suppress(ValueError):
                        values[tag.removeprefix(prefix)] = float(raw)
            return cls(version=version, values=values, basis=EQUAL_TERMS,
                       data_version=tags.get("champion.data_version"), unusable=tags.get("champion.unusable"))
        if champion is None:
            return cls(version=version, values={}, basis=tags.get("promotion.basis", RECORDED))
        return cls.from_version(champion)

    def get(self, key: str) -> float | None:
        """The figure for ``key`` (``fsd@1.5``), looked up by key or, for recorded tags, by tag name."""
        value = self.values.get(key, self.values.get(metric_tag(key)))
        if value is None or key in self.skipped or key.split("@", 1)[0] in self.skipped:
            return None
        return value


@dataclass
class GuardCheck:
    """One guard: how much worse the challenger is than the champion on ``key`` (positive = worse)."""

    key: str
    limit: float
    value: float | None
    champion_value: float | None
    worsening: float | None

    @property
    def passed(self) -> bool:
        return self.worsening is not None and self.worsening <= self.limit

    def describe(self) -> str:
        if self.worsening is None:
            side = "challenger" if self.value is None else "champion"
            return f"guard {self.key} was not measured for the {side}"
        word = "worse" if self.worsening > 0 else "better"
        return (f"guard {self.key} is {abs(self.worsening):.1%} {word} ({_g(self.value)} vs "
                f"{_g(self.champion_value)}; at most {self.limit:.1%} worse allowed)")


@dataclass
class PromotionDecision:
    """What promotion decided for a new version, and on which figures."""

    decision: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    reason: str
    improvement: float | None = None
    min_improvement: float = 0.0
    guards: list[GuardCheck] = field(default_factory=list)
    basis: str = NO_CHAMPION

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> PromotionDecision:
        """The decision recorded on a version by :meth:`tags` (how a resumed registration keeps its decision)."""

        def number(key: str) -> float | None:
            raw = tags.get(key, "none")
            return None if raw == "none" else float(raw)

        guards = [GuardCheck(key, g["limit"], None, None, g["worsening"])
                  for key, g in json.loads(tags.get("promotion.guards") or "{}").items()]
        champion = tags.get("promotion.champion_version", "none")
        return cls(decision=tags["promotion.decision"], metric=tags["promotion.metric"],
                   value=float(tags["promotion.value"]), champion_version=None if champion == "none" else champion,
                   champion_value=number("promotion.champion_value"), reason=tags.get("promotion.reason", ""),
                   improvement=number("promotion.improvement"),
                   min_improvement=number("promotion.min_improvement") or 0.0, guards=guards,
                   basis=tags.get("promotion.basis", NO_CHAMPION))

    def tags(self) -> dict[str, str]:
        """The ``promotion.*`` version tags; ``promotion.decision`` is the last key (it is written last: its
        presence on a version means the whole decision was recorded)."""
        guards = {g.key: {"limit": g.limit, "worsening": g.worsening, "passed": g.passed} for g in self.guards}
        return {
            "promotion.metric": self.metric,
            "promotion.value": repr(self.value),
            "promotion.champion_value": "none" if self.champion_value is None else repr(self.champion_value),
            "promotion.champion_version": self.champion_version or "none",
            "promotion.improvement": "none" if self.improvement is None else repr(self.improvement),
            "promotion.min_improvement": repr(self.min_improvement),
            "promotion.guards": json.dumps(guards, sort_keys=True),
            "promotion.basis": self.basis,
            "promotion.reason": self.reason,
            "promotion.decision": self.decision,
        }


def _g(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def current_champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def relative_gain(key: str, value: float, champion: float) -> float:
    """How much better ``value`` is than ``champion`` on ``key``, relative to ``|champion|`` (negative: worse).

    The direction follows the metric (:func:`lower_is_better`). A champion at
    exactly 0 makes any difference infinitely large.
    """
    diff = champion - value if lower_is_better(key) else value - champion
    if champion == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / abs(champion)


def check_guards(challenger: EvalMetrics, champion: ChampionFigures, guards: dict[str, float]) -> list[GuardCheck]:
    """Each guard of the rule against the two models' figures (a guard either side lacks fails)."""
    checks = []
    for key, limit in guards.items():
        mine = challenger.values.get(key) if challenger.usable(key) else None
        theirs = champion.get(key)
        worsening = None if mine is None or theirs is None else -relative_gain(key, mine, theirs)
        checks.append(GuardCheck(key, limit, mine, theirs, worsening))
    return checks


def _basis_note(champion: ChampionFigures) -> str:
    if champion.basis == EQUAL_TERMS:
        return f"both evaluated on data {champion.data_version or 'unknown'} with the same settings"
    return ("champion's figures as recorded at its registration, possibly on other data "
            "(not re-evaluated on equal terms)")


def decide(challenger: EvalMetrics, keys: list[str], champion: ChampionFigures | None, rule: PromotionRule,
           promote: bool) -> PromotionDecision:
    """Apply ``rule`` to the challenger's and the champion's figures.

    ``keys``: the challenger's usable primary-metric keys, in preference order
    (non-empty, from :func:`sdm.registry.metrics.usable_candidates`); the first
    the champion also has is compared. Promoted when its relative gain exceeds
    ``rule.min_improvement`` and every guard holds; kept otherwise.
    """
    kept_or_not = KEPT if promote else NOT_REQUESTED
    suffix = "" if promote else "; promotion not requested"
    if champion is None:
        key = keys[0]
        return PromotionDecision(PROMOTED if promote else NOT_REQUESTED, key, challenger.values[key], None, None,
                                 "no champion yet" + suffix, min_improvement=rule.min_improvement)
    version = champion.version
    if champion.unusable:
        key = keys[0]
        return PromotionDecision(
            PROMOTED if promote else NOT_REQUESTED, key, challenger.values[key], version, None,
            f"champion v{version} cannot be evaluated on this data ({champion.unusable}): the challenger "
            "replaces it" + suffix, min_improvement=rule.min_improvement, basis=champion.basis)
    shared = [k for k in keys if champion.get(k) is not None]
    if not shared:
        key = keys[0]
        return PromotionDecision(
            kept_or_not, key, challenger.values[key], version, None,
            f"champion v{version} has none of {', '.join(keys)} to compare with" + suffix,
            min_improvement=rule.min_improvement, basis=champion.basis)
    key = shared[0]
    value, champ = challenger.values[key], champion.get(key)
    assert champ is not None
    gain = relative_gain(key, value, champ)
    better = gain > rule.min_improvement
    direction = "lower" if lower_is_better(key) else "higher"
    need = f"more than {rule.min_improvement:.1%} better" if rule.min_improvement else "strictly better"
    change = f"{abs(gain):.1%} {'better' if gain > 0 else 'worse'}" if gain else "equal"
    reason = (f"{key} {value:.6g} vs champion v{version}'s {champ:.6g}: {change} ({direction} is better; "
              f"needs {need})")
    guards = check_guards(challenger, champion, rule.guards)
    failed = [g for g in guards if not g.passed]
    if better and failed:
        reason += ", but " + "; ".join(g.describe() for g in failed)
    elif guards:
        reason += "; " + "; ".join(g.describe() for g in guards)
    reason += f" [{_basis_note(champion)}]" + suffix
    decision = PROMOTED if promote and better and not failed else kept_or_not
    return PromotionDecision(decision, key, value, version, champ, reason, improvement=gain,
                             min_improvement=rule.min_improvement, guards=guards, basis=champion.basis)
