"""The primary metric of a metrics.json and the champion decision (no MLflow store needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _registry_helpers import write_metrics
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from sdm.registry.metrics import MetricsError, lower_is_better, read_metrics, usable_candidates
from sdm.registry.promotion import KEPT, NOT_REQUESTED, PROMOTED, decide, metric_tag


def _champion(version: int, metrics: dict[str, float]) -> ModelVersion:
    """A champion version as the registry returns it: its metrics as ``metrics.*`` tags."""
    tags = [ModelVersionTag(metric_tag(k), repr(v)) for k, v in metrics.items()]
    return ModelVersion(name="m", version=version, creation_timestamp=0, tags=tags)


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
    d = decide(m, ["fsd@1.5"], None, promote=True)
    assert (d.decision, d.metric, d.value, d.champion_value) == (PROMOTED, "fsd@1.5", 0.4, None)
    assert d.tags()["promotion.champion_value"] == "none"
    assert decide(m, ["fsd@1.5"], None, promote=False).decision == NOT_REQUESTED


@pytest.mark.parametrize("value, champ, expected", [(0.3, 0.4, PROMOTED), (0.5, 0.4, KEPT), (0.4, 0.4, KEPT)])
def test_decide_lower_is_better_strictly(tmp_path: Path, value: float, champ: float, expected: str) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fsd@1.5": value}))
    d = decide(m, ["fsd@1.5"], _champion(3, {"fsd@1.5": champ}), promote=True)
    assert (d.decision, d.value, d.champion_value, d.champion_version) == (expected, value, champ, "3")
    assert d.tags()["promotion.value"] == repr(value) and d.tags()["promotion.champion_value"] == repr(champ)


def test_decide_higher_is_better_for_miou(tmp_path: Path) -> None:
    m = read_metrics(write_metrics(tmp_path / "m.json", {"miou@1.5": 0.6}))
    assert decide(m, ["miou@1.5"], _champion(1, {"miou@1.5": 0.5}), promote=True).decision == PROMOTED
    assert decide(m, ["miou@1.5"], _champion(1, {"miou@1.5": 0.7}), promote=True).decision == KEPT


def test_decide_compares_on_a_metric_both_have(tmp_path: Path) -> None:
    # The candidate has FID, the champion only FSD: compare FSD, not FID against nothing.
    m = read_metrics(write_metrics(tmp_path / "m.json", {"fid@1.5": 20.0, "fsd@1.5": 0.5}))
    d = decide(m, ["fid@1.5", "fsd@1.5"], _champion(2, {"fsd@1.5": 0.4}), promote=True)
    assert (d.decision, d.metric) == (KEPT, "fsd@1.5")
    none_shared = decide(m, ["fid@1.5"], _champion(2, {"miou@1.5": 0.4}), promote=True)
    assert none_shared.decision == KEPT and "has none of fid@1.5" in none_shared.reason
