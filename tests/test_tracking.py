"""sdm.tracking: which MLflow store is used, where artifacts go, metric names."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdm import tracking
from sdm.config import resolve


def test_default_store_is_sqlite_under_repo_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SDM_MLFLOW_ARTIFACTS", raising=False)
    uri = tracking.tracking_uri()
    repo = Path(__file__).resolve().parents[1]
    assert uri == f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}"
    assert tracking.artifacts_dir(uri) == repo / "mlflow" / "artifacts"


def test_env_wins_over_config_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = resolve(params=None, overrides=["register.tracking_uri=http://127.0.0.1:5000"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:5000"
    assert tracking.artifacts_dir("http://127.0.0.1:5000") is None  # the server decides
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x/other.db")
    assert tracking.tracking_uri(cfg) == "sqlite:////tmp/x/other.db"


def test_ensure_experiment_uses_artifacts_dir(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    exp_id = tracking.ensure_experiment("sdm-test")
    assert tracking.ensure_experiment("sdm-test") == exp_id  # idempotent
    exp = mlflow.MlflowClient(mlflow_uri).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "mlflow-artifacts").as_uri()


def test_metric_key_is_mlflow_safe() -> None:
    from mlflow.utils.validation import _validate_metric_name

    assert tracking.metric_key("fid@1.5") == "fid_at_1.5"
    assert tracking.metric_key("miou") == "miou"
    _validate_metric_name(tracking.metric_key("feature_diversity@1.0 (lpips)!"))
