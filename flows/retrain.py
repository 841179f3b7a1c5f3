"""``retrain``: the whole pipeline, and the flow the schedules run.

data (DVC decides whether to prepare; push) -> train on Ray (pretrain +
finetune) -> evaluate with classifier-free guidance (cached per checkpoint)
-> register in MLflow (+ promote) -> a markdown summary artifact with the
metrics table, the promotion decision and the sample grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.data import check_overrides, prepare_data, push_data
from flows.evaluate import evaluate_checkpoint
from flows.register import register_model
from flows.summary import image_markdown, retrain_summary
from flows.train import run_name_for_flow, train_model
from sdm.config import resolve
from sdm.tracking import tracking_uri


def _grid(eval_dir: Path) -> Path | None:
    grids = sorted((eval_dir / "grids").glob("*.png"))
    return grids[-1] if grids else None


@flow(name="retrain", retries=1, retry_delay_seconds=5, log_prints=True)
def retrain(
    preset: str | None = None,
    overrides: list[str] | None = None,
    promote: bool = True,
    push: bool = True,
    workers: int | None = None,
    params_file: str = "params.yaml",
) -> dict[str, Any]:
    """Run the pipeline from the project root (where params.yaml and dvc.yaml are); returns a summary dict."""
    logger = get_run_logger()
    overrides = list(overrides or [])
    check_overrides(overrides)
    config = resolve(preset=preset, overrides=overrides, params=params_file)

    data = prepare_data(config)
    if push:
        push_data(config)
    # Train on exactly the data DVC prepared (the stage's recorded output).
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, prepared=data["prepared"]))

    run_name = run_name_for_flow()
    trained = train_model(config, run_name, workers)
    eval_dir = Path(trained["run_dir"]) / "evaluation"
    metrics = evaluate_checkpoint(config, trained["checkpoint"], data["prepared"], data["version"], str(eval_dir))
    registration = register_model(config, trained["checkpoint"], str(eval_dir / "metrics.json"), promote)

    result = {
        "run_name": run_name,
        "data_version": data["version"],
        "data_cached": data["cached"],
        "prepared": data["prepared"],
        "checkpoint": trained["checkpoint"],
        "evaluation": str(eval_dir),
        "grid": str(_grid(eval_dir) or ""),
        "metrics": metrics,
        "registration": registration,
        "tracking_uri": tracking_uri(config),
    }
    summary = retrain_summary(result)
    grid = _grid(eval_dir)
    create_markdown_artifact(summary + ("\n\n## Samples\n\n" + image_markdown(grid) if grid else ""),
                             key="retrain-summary", description=f"sdm retrain {run_name}")
    logger.info("registered %s version %s; promotion: %s", registration["name"], registration["version"],
                registration["decision"])
    return result
