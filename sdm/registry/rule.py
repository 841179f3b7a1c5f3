"""The promotion rule of params.yaml (``register.promotion``), checked against what evaluation produces.

A rule names metric keys (``fsd@1.5``) or names (``fsd``, read at
``sample.guidance_scale``). Evaluation writes ``<name>@<scale>`` for every
``evaluate.guidance_scales`` entry and every metric it scores
(:func:`evaluation_metric_keys`); a rule naming anything else could never be
applied, so :func:`check_promotion_rule` refuses it before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdm.config import Config
from sdm.errors import InputError
from sdm.eval.report import METRIC_COLUMNS
from sdm.eval.sweep import format_scale

# Where a rule lives in params.yaml, for messages.
SECTION = "register.promotion"


class PromotionRuleError(InputError):
    """A promotion rule that evaluation cannot back; the message names the params.yaml key."""


@dataclass(frozen=True)
class PromotionRule:
    """``register.promotion`` with every metric resolved to the key evaluation writes.

    ``metric``: ``"auto"`` or a key; ``guards``: key -> the largest relative
    worsening allowed (0.05 = 5%); ``min_improvement``: the relative gain over
    the champion required (0 = strictly better).
    """

    metric: str = "auto"
    min_improvement: float = 0.0
    guards: dict[str, float] = field(default_factory=dict)


def evaluation_metric_keys(config: Config) -> list[str]:
    """Every ``<metric>@<scale>`` key an evaluation with ``config.evaluate`` writes (when not skipped)."""
    return [f"{name}@{format_scale(s)}" for s in config.evaluate.guidance_scales for name in METRIC_COLUMNS]


def metric_key(name: str, config: Config) -> str:
    """A rule's metric as evaluation names it: ``fsd`` -> ``fsd@1.5`` (``sample.guidance_scale``); keys unchanged."""
    return name if "@" in name else f"{name}@{format_scale(config.sample.guidance_scale)}"


def _check_key(name: str, where: str, config: Config, produced: list[str]) -> str:
    key = metric_key(name, config)
    if key in produced:
        return key
    # Evaluation writes 1.0 as "1.0": accept "fsd@1" for it.
    base, _, scale = key.partition("@")
    try:
        alt = f"{base}@{format_scale(float(scale))}"
    except ValueError:
        alt = ""
    if alt in produced:
        return alt
    names = ", ".join(METRIC_COLUMNS)
    scales = ", ".join(format_scale(s) for s in config.evaluate.guidance_scales)
    at = "" if "@" in name else f" (at sample.guidance_scale = {format_scale(config.sample.guidance_scale)})"
    raise PromotionRuleError(
        f"{where} = {name!r}{at}: evaluation does not produce {key!r}; it produces <metric>@<scale> for metrics "
        f"{names} at evaluate.guidance_scales {scales} (e.g. {produced[0] if produced else 'none'})"
    )


def check_promotion_rule(config: Config) -> PromotionRule:
    """``config.register.promotion`` as a :class:`PromotionRule`, or a ``PromotionRuleError`` naming the bad key.

    Run before any training: a rule naming a metric the evaluation does not
    produce (a typo, a scale not in ``evaluate.guidance_scales``, LPIPS) would
    otherwise fail only at registration, after the training was paid for.
    """
    rule = config.register.promotion
    produced = evaluation_metric_keys(config)
    metric = rule.metric.strip()
    if not metric:
        raise PromotionRuleError(f"{SECTION}.metric is empty: use auto or a metric key such as fsd@1.5")
    if metric != "auto":
        metric = _check_key(metric, f"{SECTION}.metric", config, produced)
    guards: dict[str, float] = {}
    for name, limit in rule.guards.items():
        where = f"{SECTION}.guards.{name}"
        if not 0.0 <= limit:
            raise PromotionRuleError(f"{where} = {limit!r}: a guard is the largest relative worsening allowed, "
                                     ">= 0 (0.05 = at most 5% worse than the champion)")
        guards[_check_key(name, where, config, produced)] = float(limit)
    return PromotionRule(metric=metric, min_improvement=float(rule.min_improvement), guards=guards)
