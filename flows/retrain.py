"""``retrain``: the whole pipeline, the flow the schedules run, and its summary artifact.

data (DVC decides whether to prepare; push) -> train on Ray (pretrain +
finetune) -> evaluate with classifier-free guidance (cached per checkpoint)
-> register in MLflow (+ promote) -> a markdown summary artifact with the
metrics table, the promotion decision and the sample grid.

``serve`` runs it on the schedule that prefect.yaml's ``retrain-nightly``
deployment declares, so ``sdm pipeline serve`` and ``prefect deploy`` run the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.tasks import (
    check_overrides,
    evaluate_checkpoint,
    prepare_data,
    push_data,
    register_model,
    run_name_for_flow,
    train_model,
)
from sdm.config import resolve
from sdm.errors import InputError
from sdm.tracking import tracking_uri

DEPLOYMENT = "retrain-nightly"


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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the numeric metrics, then the skipped ones with their reasons."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
    skipped = metrics.get("skipped") or {}
    if skipped:
        lines += ["", "Skipped:"] + [f"- **{k}**: {why}" for k, why in sorted(skipped.items())]
    return "\n".join(lines)


def image_markdown(path: str | Path, alt: str = "sample grid", max_bytes: int = 2_000_000) -> str:
    """Embed a PNG inline (data URI) so the Prefect UI shows it without a file server."""
    path = Path(path)
    if not path.exists():
        return f"_(no image at {path})_"
    data = path.read_bytes()
    if len(data) > max_bytes:
        return f"_(grid too large to embed: {path})_"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def retrain_summary(result: dict[str, Any]) -> str:
    """Markdown for one retrain run: data version, metrics, promotion decision, where the model is."""
    reg = result.get("registration", {})
    lines = [
        f"# sdm retrain: {result.get('run_name', '?')}",
        "",
        f"- **data version**: `{result.get('data_version', '?')}`"
        + (" (unchanged: preparation skipped)" if result.get("data_cached") else ""),
        f"- **checkpoint**: `{result.get('checkpoint', '?')}`",
        f"- **model**: `models:/{reg.get('name', '?')}/{reg.get('version', '?')}`"
        f" aliases: {', '.join(reg.get('aliases', [])) or '-'}",
        f"- **promotion**: {reg.get('decision', '-')}",
        f"- **tracking URI**: `{result.get('tracking_uri', '?')}`",
        "",
        "## Metrics",
        "",
        metrics_table(result.get("metrics", {})),
    ]
    return "\n".join(lines)


def deployment_spec(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> dict[str, Any]:
    """The named deployment of prefect.yaml (schedules, parameters): one source for serve and deploy."""
    path = Path(prefect_yaml)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prefect.yaml here; run from the sdm checkout")
    data = yaml.safe_load(path.read_text()) or {}
    for dep in data.get("deployments") or []:
        if dep.get("name") == name:
            return dep
    raise InputError(f"{path}: no deployment named {name!r}")


def serve(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> None:
    """Block, running ``retrain`` whenever its schedule fires (needs a Prefect server: PREFECT_API_URL)."""
    from prefect.client.schemas.schedules import CronSchedule

    spec = deployment_spec(prefect_yaml, name)
    schedules = [CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))
                 for s in spec.get("schedules") or [] if s.get("active", True)]
    retrain.serve(name=name, schedules=schedules, parameters=spec.get("parameters") or {},
                  description=spec.get("description"))
