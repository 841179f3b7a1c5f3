"""The training task: dispatch Ray training (pretrain + finetune) under a run name tied to the flow run."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from sdm.config import Config


def run_name_for_flow(prefix: str = "retrain") -> str:
    """``<prefix>-<flow run id>``: a retried flow run keeps its id, so it resumes its own training run."""
    run_id = flow_run.get_id() or "local"
    return f"{prefix}-{run_id}"


@task(name="train")
def train_model(config: Config, run_name: str, workers: int | None = None) -> dict[str, Any]:
    from sdm.train.launch import train

    logger = get_run_logger()
    result = train(config, run_name=run_name, workers=workers, echo=logger.info)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.final_dir), "step": result.global_step,
            "mlflow_run_id": result.mlflow_run_id}
