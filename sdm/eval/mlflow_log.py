"""Log an evaluation to the MLflow run that trained the checkpoint (when the checkpoint names one)."""

from __future__ import annotations

import time
from pathlib import Path

from sdm.config import Config


def log_to_run(run_id: str, metrics: dict[str, float], out_dir: Path, config: Config) -> str:
    """Log numeric metrics (MLflow-safe names: ``miou@1.5`` -> ``miou_at_1.5``) and every file under
    ``out_dir`` (artifact folder ``evaluation/``) to run ``run_id``; returns the tracking URI.

    Uses the client API, not ``mlflow.start_run``, so an active run of the
    caller (a training or Prefect flow) is left alone. Raises ``LookupError``
    when the run is not in the store.
    """
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from sdm.tracking import configure, metric_key

    uri = configure(config)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as e:
        raise LookupError(f"MLflow run {run_id} (from the checkpoint's meta.json) is not in {uri}") from e
    now = int(time.time() * 1000)
    batch = [Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):  # MLflow's per-request limit
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path="evaluation")
    return uri
