"""Log an evaluation to the MLflow run that trained the checkpoint (when the checkpoint names one)."""

from __future__ import annotations

from pathlib import Path

from sdm.config import Config


def log_to_run(run_id: str, metrics: dict[str, float], out_dir: Path, config: Config) -> str:
    """Log numeric metrics (MLflow-safe names) and every file under ``out_dir`` (artifact folder
    ``evaluation/``) to run ``run_id``; returns the tracking URI. Raises when the run is not in the store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sdm.tracking import configure, metric_key

    uri = configure(config)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        raise LookupError(f"MLflow run {run_id} (from the checkpoint's meta.json) is not in {uri}") from e
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    return uri
