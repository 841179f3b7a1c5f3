"""The primary metric of a metrics.json, the promotion rule and the champion decision (no MLflow store needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _registry_helpers import write_metrics
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from sdm.config import ConfigError, resolve
from sdm.registry.metrics import EvalMetrics, MetricsError, lower_is_better, read_metrics, usable_candidates
from sdm.registry.promotion import (
    EQUAL_TERMS,
    KEPT,
    NOT_REQUESTED,
    PROMOTED,
    RECORDED,
    ChampionFigures,
    decide,
    metric_tag,
    relative_gain,
)
from sdm.registry.rule import PromotionRule, PromotionRuleError, check_promotion_rule, evaluation_metric_keys

STRICT = PromotionRule()


def _champion(version: int, metrics: dict[str, float]) -> ChampionFigures:
    """A champion's figures as a version's ``metrics.*`` tags recorded them."""
    tags = [ModelVersionTag(metric_tag(k), repr(v)) for k, v in metrics.items()]
    return ChampionFigures.from_version(ModelVersion(name="m", version=version, creation_timestamp=0, tags=tags))


def _figures(values: dict[str, float], skipped: dict[str, str] | None = None) -> EvalMetrics:
    return EvalMetrics(path=Path("metrics.json"), values=values, skipped=skipped or {})


@pytest.mark.parametrize("content, problem", [
    (None, "no metrics file"),
    ("{}", "no metric figures"),
    ('{"primary_metric": "fsd@1.5", "skipped": {"fid": "no weights"}}', "no metric figures"),
    ("[1, 2]", "expected a JSON object"),
    ('{"fsd@1.5": 0.3,', "not valid JSON"),
])
def test_unusable_metrics_files_are_clear_errors(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MetricsError, match=problem) as err:
        read_metrics(path)
    assert str(path) in str(err.value)


def test_auto_prefers_fid_when_computed_else_fsd(tmp_path: Path) -> None:
    both = read_metrics(write_metrics(tmp_path / "a.json", {"fid@1.5": 30.0, "fsd@1.5": 0.4, "miou@1.5": 0.2}))
    assert usable_candidates(both, "auto", 1.5)[0] == "fid@1.5"
    no_fid = read_metrics(write_metrics(tmp_path / "b.json", {"fsd@1.5": 0.4, "fid@1.5": 1e9,
                                                             "skipped": {"fid@1.5": "no Inception weights"}}))
    assert usable_candidates(no_fid, "auto", 1.5) == ["fsd@1.5"]
    # Evaluation writes integer scales as "1.0".
    at_one = read_metrics(write_metrics(tmp_path / "c.json", {"fsd@1.0": 0.5}))
    assert usable_candidates(at_one, "auto", 1.0) == ["fsd@1.0"]


def test_metrics_json_primary_metric_comes_first_and_explicit_setting_wins(tmp_path: Path) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fid@2.0": 25.0, "fsd@1.5": 0.4, "miou@1.5": 0.3,
                                                         "primary_metric": "fid@2.0"}))
    assert usable_candidates(m, "auto", 1.5) == ["fid@2.0", "fsd@1.5"]
    assert usable_candidates(m, "miou", 1.5) == ["miou@1.5"]
    with pytest.raises(MetricsError, match=r"no usable primary metric.*fid@1\.5.*the file has: .*miou@1\.5"):
        usable_candidates(m, "fid@1.5", 1.5)


def test_skipped_only_primary_metric_is_an_error_naming_the_reason(tmp_path: Path) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"miou@1.5": 0.3, "skipped": {"fid": "no Inception weights",
                                                                                     "fsd": "no segmenter"}}))
    with pytest.raises(MetricsError, match="no Inception weights"):
        usable_candidates(m, "auto", 1.5)


def test_direction() -> None:
    assert lower_is_better("fid@1.5") and lower_is_better("fsd@1.0")
    assert not lower_is_better("miou@1.5") and not lower_is_better("feature_diversity@1.5")


def test_decide_no_champion(tmp_path: Path) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4}))
    d = decide(m, ["fsd@1.5"], None, STRICT, promote=True)
    assert (d.decision, d.metric, d.value, d.champion_value) == (PROMOTED, "fsd@1.5", 0.4, None)
    assert d.tags()["promotion.champion_value"] == "none" and d.tags()["promotion.basis"] == "no champion"
    assert decide(m, ["fsd@1.5"], None, STRICT, promote=False).decision == NOT_REQUESTED


@pytest.mark.parametrize("value, champ, expected", [(0.3, 0.4, PROMOTED), (0.5, 0.4, KEPT), (0.4, 0.4, KEPT)])
def test_decide_lower_is_better_strictly(tmp_path: Path, value: float, champ: float, expected: str) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fsd@1.5": value}))
    d = decide(m, ["fsd@1.5"], _champion(3, {"fsd@1.5": champ}), STRICT, promote=True)
    assert (d.decision, d.value, d.champion_value, d.champion_version) == (expected, value, champ, "3")
    assert d.tags()["promotion.value"] == repr(value) and d.tags()["promotion.champion_value"] == repr(champ)
    # Figures from the champion's own tags are marked as such: not an equal-terms comparison.
    assert d.basis == RECORDED and "not re-evaluated on equal terms" in d.reason


def test_decide_higher_is_better_for_miou(tmp_path: Path) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"miou@1.5": 0.6}))
    assert decide(m, ["miou@1.5"], _champion(1, {"miou@1.5": 0.5}), STRICT, promote=True).decision == PROMOTED
    assert decide(m, ["miou@1.5"], _champion(1, {"miou@1.5": 0.7}), STRICT, promote=True).decision == KEPT


def test_decide_compares_on_a_metric_both_have(tmp_path: Path) -> None:
    # The candidate has FID, the champion only FSD: compare FSD, not FID against nothing.
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fid@1.5": 20.0, "fsd@1.5": 0.5}))
    d = decide(m, ["fid@1.5", "fsd@1.5"], _champion(2, {"fsd@1.5": 0.4}), STRICT, promote=True)
    assert (d.decision, d.metric) == (KEPT, "fsd@1.5")
    none_shared = decide(m, ["fid@1.5"], _champion(2, {"miou@1.5": 0.4}), STRICT, promote=True)
    assert none_shared.decision == KEPT and "has none of fid@1.5" in none_shared.reason


def test_relative_gain_follows_the_metric_direction() -> None:
    assert relative_gain("fsd@1.5", 0.3, 0.4) == pytest.approx(0.25)  # a distance: lower is better
    assert relative_gain("miou@1.5", 0.3, 0.4) == pytest.approx(-0.25)  # higher is better
    assert relative_gain("fsd@1.5", 0.1, 0.0) == -float("inf") and relative_gain("fsd@1.5", 0.0, 0.0) == 0.0


# Real figures of two evaluations on the same data (fsd@1.5: challenger 20% better; mIoU 10% lower).
CHALLENGER = {"fsd@1.5": 0.32, "miou@1.5": 0.27, "feature_diversity@1.5": 0.61, "fsd@1.0": 0.45, "miou@1.0": 0.22}
CHAMPION = {"fsd@1.5": 0.40, "miou@1.5": 0.30, "feature_diversity@1.5": 0.58, "fsd@1.0": 0.50, "miou@1.0": 0.21}


def _equal_terms(values: dict[str, float]) -> ChampionFigures:
    return ChampionFigures("4", values, EQUAL_TERMS, "dvc:abc@def")


def test_guard_keeps_out_a_challenger_better_on_the_primary_metric() -> None:
    rule = PromotionRule(metric="fsd@1.5", guards={"miou@1.5": 0.05})
    d = decide(_figures(CHALLENGER), ["fsd@1.5"], _equal_terms(CHAMPION), rule, promote=True)
    assert d.decision == KEPT and d.improvement == pytest.approx(0.2)
    assert "20.0% better" in d.reason and "but guard miou@1.5 is 10.0% worse" in d.reason
    assert "at most 5.0% worse allowed" in d.reason and "both evaluated on data dvc:abc@def" in d.reason
    (guard,) = d.guards
    assert not guard.passed and guard.worsening == pytest.approx(0.1)
    assert '"passed": false' in d.tags()["promotion.guards"] and d.tags()["promotion.basis"] == EQUAL_TERMS
    # A looser guard lets the same figures through; so does a guard on a metric that did not worsen.
    assert decide(_figures(CHALLENGER), ["fsd@1.5"], _equal_terms(CHAMPION),
                  PromotionRule(metric="fsd@1.5", guards={"miou@1.5": 0.15}), promote=True).decision == PROMOTED
    assert decide(_figures(CHALLENGER), ["fsd@1.5"], _equal_terms(CHAMPION),
                  PromotionRule(metric="fsd@1.5", guards={"miou@1.0": 0.0}), promote=True).decision == PROMOTED


def test_guard_not_measured_keeps_the_champion() -> None:
    rule = PromotionRule(metric="fsd@1.5", guards={"miou@1.5": 0.5})
    challenger = _figures(CHALLENGER, skipped={"miou@1.5": "undefined"})
    d = decide(challenger, ["fsd@1.5"], _equal_terms(CHAMPION), rule, promote=True)
    assert d.decision == KEPT and "guard miou@1.5 was not measured for the challenger" in d.reason


def test_min_improvement_is_relative() -> None:
    champion = _equal_terms(CHAMPION)
    assert decide(_figures(CHALLENGER), ["fsd@1.5"], champion, PromotionRule(min_improvement=0.19),
                  promote=True).decision == PROMOTED
    d = decide(_figures(CHALLENGER), ["fsd@1.5"], champion, PromotionRule(min_improvement=0.25), promote=True)
    assert d.decision == KEPT and "needs more than 25.0% better" in d.reason
    assert d.tags()["promotion.min_improvement"] == "0.25"


def test_champion_that_cannot_take_the_data_is_replaced() -> None:
    gone = ChampionFigures("2", {}, EQUAL_TERMS, "dvc:new", unusable="classes differ: 12 vs 14")
    d = decide(_figures(CHALLENGER), ["fsd@1.5"], gone, STRICT, promote=True)
    assert d.decision == PROMOTED and "classes differ" in d.reason and d.champion_version == "2"


def test_rule_names_only_metrics_evaluation_produces() -> None:
    cfg = resolve(params=None, overrides=["evaluate.guidance_scales=[1.0,1.5]", "sample.guidance_scale=1.5",
                                          "register.promotion.metric=fsd",
                                          "register.promotion.guards={miou: 0.05, fid@1: 0.1}"])
    assert "fsd@1.5" in evaluation_metric_keys(cfg) and "miou@1.0" in evaluation_metric_keys(cfg)
    rule = check_promotion_rule(cfg)
    # Names are read at sample.guidance_scale; "@1" is evaluation's "@1.0".
    assert rule.metric == "fsd@1.5" and rule.guards == {"miou@1.5": 0.05, "fid@1.0": 0.1}
    assert check_promotion_rule(resolve(params=None)).metric == "auto"
    for bad, where in [("register.promotion.metric=kid@2.0", "register.promotion.metric = 'kid@2.0'"),
                       ("register.promotion.metric=fsd@2.0", "does not produce 'fsd@2.0'"),
                       ("register.promotion.metric=lpips_diversity", "register.promotion.metric"),
                       ("register.promotion.guards={mIoU: 0.05}", "register.promotion.guards.mIoU"),
                       ("register.promotion.guards={miou: -0.1}", ">= 0")]:
        with pytest.raises(PromotionRuleError, match=re.escape(where)):
            check_promotion_rule(resolve(params=None, overrides=[bad]))


def test_retired_primary_metric_key_says_where_it_went(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("register:\n  primary_metric: fsd\n")
    with pytest.raises(ConfigError, match=r"'register.primary_metric' is retired: write it as "
                                          r"register.promotion.metric"):
        resolve(params=params)
    with pytest.raises(ConfigError, match="min_improvement: .* is below the minimum 0"):
        resolve(params=None, overrides=["register.promotion.min_improvement=-0.1"])


def test_rule_metric_names_cover_every_metric_evaluation_scores() -> None:
    """A metric that scoring reports (or skips) but the rule check does not know could never be a guard."""
    import numpy as np

    from sdm.eval.report import METRIC_COLUMNS
    from sdm.eval.scoring import RealReference, score_samples
    from sdm.eval.segmenter import EvalSegNet, Segmenter

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    seg = Segmenter(EvalSegNet(4, width=8).eval(), 4, "test", "test", {})
    ref = RealReference(real, rng.integers(0, 4, (3, 16, 16)), seg.predict(real)[1], None, {})
    samples = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    metrics, skipped, _ = score_samples(samples, ref, seg, None)
    assert {"miou", "fsd", "feature_diversity"} <= set(metrics) and "fid" in skipped
    assert set(metrics) | set(skipped) <= set(METRIC_COLUMNS)
    # Every metric column but the timing is either measured or listed as skipped with its reason.
    assert set(metrics) | set(skipped) == set(METRIC_COLUMNS) - {"seconds_per_image"}
