"""MLflow logging of a training run: params and data version once, metrics every log line, EMA sample grids.

Runs where the hooks run: in the driver (``sdm train`` relays rank 0's events
from the Ray workers), so workers need no access to the tracking store. One
MLflow run per training run directory: its id is kept in
``<run_dir>/mlflow_run.json`` and a rerun that resumes logs into the same run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sdm.config import Config, to_dict
from sdm.train.hooks import PhaseInfo, StepLog, TrainHooks

RUN_FILE = "mlflow_run.json"
METRICS = ("loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "lr", "grad_norm", "img_per_s")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"pretrain": {"lr": 1e-4}}} -> {"train.pretrain.lr": "0.0001"}."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_run(config: Config, run_dir: Path, run_name: str, experiment: str,
              params: dict[str, Any]) -> tuple[Any, str, bool]:
    """(client, run id, resumed): the run recorded in ``run_dir``, or a new one with the params logged."""
    import mlflow
    from mlflow.entities import Param, RunStatus
    from mlflow.exceptions import MlflowException

    from sdm.tracking import ensure_experiment, tracking_uri

    uri = tracking_uri(config)
    experiment_id = ensure_experiment(experiment, config)
    client = mlflow.MlflowClient(tracking_uri=uri)
    record = run_dir / RUN_FILE
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("tracking_uri") == uri:
            try:
                client.get_run(saved["run_id"])
                client.update_run(saved["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
                return client, saved["run_id"], True
            except MlflowException:
                pass  # deleted from the store: start a new one
    run = client.create_run(experiment_id, run_name=run_name, tags={"sdm.kind": "train", "sdm.run_dir": str(run_dir)})
    run_id = run.info.run_id
    all_params = {**flatten(to_dict(config)), **{k: str(v) for k, v in params.items()}}
    items = [Param(k, v[:6000]) for k, v in all_params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment": experiment}, indent=1))
    tmp.replace(record)
    return client, run_id, False


def end_run(client: Any, run_id: str, ok: bool) -> None:
    from mlflow.entities import RunStatus

    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


class MlflowLogger(TrainHooks):
    """Logs metrics (global step), sample grids and checkpoint/final locations to one MLflow run."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def on_phase_start(self, phase: PhaseInfo) -> None:
        self.client.set_tag(self.run_id, "sdm.phase", phase.name)

    def on_log(self, log: StepLog) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(log.metrics[k]), now, log.global_step) for k in METRICS if k in log.metrics]
        metrics.append(Metric("phase", float(log.phase.index), now, log.global_step))
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None:
        self.client.set_tag(self.run_id, "sdm.last_checkpoint", where)

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None:
        self.client.set_tag(self.run_id, "sdm.final_checkpoint", str(final_dir))
