"""Log an evaluation to the MLflow run that trained the checkpoint (when the checkpoint names one).

The evaluation's output folder is written first and logged after: MLflow
being down must not cost the metrics and grids that took minutes to compute.
When logging fails, the folder stays, its ``evaluation.json`` says why under
``mlflow``, and the error names the folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdm.atomic import write_file
from sdm.config import Config

INFO_FILE = "evaluation.json"
PENDING = "not logged yet: logged to MLflow once the output folder is in place"


class EvaluationNotLoggedError(RuntimeError):
    """Logging an evaluation to MLflow failed (an outage, not bad input); the output folder is kept."""


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
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # the store did not answer: not the same as "no such run"
        raise LookupError(f"MLflow run {run_id} (from the checkpoint's meta.json) is not in {uri}") from e
    now = int(time.time() * 1000)
    batch = [Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):  # MLflow's per-request limit
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path="evaluation")
    return uri


def record_status(out_dir: Path, status: dict[str, Any]) -> None:
    """Set ``mlflow`` in ``out_dir/evaluation.json`` (replaced whole: a reader sees the old or the new file)."""
    path = Path(out_dir) / INFO_FILE
    info = json.loads(path.read_text()) if path.exists() else {}
    info["mlflow"] = status
    write_file(path, (json.dumps(info, indent=2, default=str) + "\n").encode())


def log_evaluation(run_id: str, metrics: dict[str, float], out_dir: Path, config: Config,
                   log: Callable[[str], Any]) -> dict[str, Any]:
    """Log the finished output folder ``out_dir`` to run ``run_id``; returns (and records) the status.

    A run missing from the store is a warning (as before). Any other failure
    (the server is down, a timeout) records the error in evaluation.json and
    raises :class:`EvaluationNotLoggedError` naming ``out_dir``, which is kept.
    MLflow's HTTP retries are bounded (``sdm.tracking.bounded_http``): a dead
    server fails in seconds, not minutes.
    """
    from sdm.tracking import bounded_http, tracking_uri

    uri = tracking_uri(config)
    try:
        with bounded_http():
            uri = log_to_run(run_id, metrics, out_dir, config)
    except LookupError as e:
        log(f"warning: not logged to MLflow: {e}")
        status: dict[str, Any] = {"logged": False, "run_id": run_id, "reason": str(e)}
    except Exception as e:
        first = str(e).splitlines()[0][:300] if str(e) else ""
        record_status(out_dir, {"logged": False, "run_id": run_id, "tracking_uri": uri,
                                "reason": f"logging failed: {type(e).__name__}: {first}"})
        raise EvaluationNotLoggedError(
            f"logging the evaluation to MLflow run {run_id} ({uri}) failed: {type(e).__name__}: {first}; "
            f"the evaluation output is kept in {out_dir} (metrics.json, grids/, evaluation.json); rerun "
            f"`sdm evaluate` once MLflow is reachable to log it") from e
    else:
        log(f"logged to MLflow run {run_id} ({uri})")
        status = {"logged": True, "run_id": run_id, "tracking_uri": uri}
    record_status(out_dir, status)
    return status
