"""The pipeline's Prefect tasks: each a thin call into ``sdm``, with its retry and cache policy.

- ``prepare_data`` / ``push_data``: DVC decides whether the data is out of date; the prepared data is pushed
  to the remote (retried: a remote may hiccup).
- ``train_model``: Ray training (pretrain + finetune) under a run name tied to the flow run, so a retried
  flow run resumes its own training run.
- ``evaluate_checkpoint``: cached on the checkpoint's content: an unchanged checkpoint is not evaluated twice.
- ``register_model``: log the model version, tag lineage, alias, promote (MLflow calls are retried).

Only failures that may succeed on a second try are retried (``transient_only``): bad input stays bad.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from sdm.config import Config, ConfigError, to_dict
from sdm.data.version import data_version_info, dvc_command, find_dvc_root, run_dvc, stage_names, stage_out

# Bad input stays bad: retrying it only delays the clear error.
NOT_TRANSIENT: tuple[type[BaseException], ...] = (ConfigError, ValueError, FileNotFoundError, KeyError, TypeError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a bad-input error."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # an unreadable result: be conservative and retry
            return True
    return not isinstance(exc, NOT_TRANSIENT)


# params.yaml keys the DVC prepare stages track: a --set on them would train on
# data DVC never versioned, so the pipeline refuses it.
DVC_TRACKED_DATA_KEYS = ("format", "source", "prepared", "image_size", "val_fraction", "split_seed",
                         "on_error", "shard_mb", "synth")


def check_overrides(overrides: list[str]) -> None:
    """Refuse ``--set data.<key>`` for keys DVC versions (they belong in params.yaml)."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        parts = key.split(".")
        if parts[0] == "data" and len(parts) > 1 and parts[1] in DVC_TRACKED_DATA_KEYS:
            raise ConfigError(f"--set {key}: the pipeline's data is versioned by DVC from params.yaml; "
                              "edit params.yaml (and commit it) instead of overriding it")


def stage_for(config: Config) -> str:
    """The DVC stage that prepares ``config``'s dataset: ``prepare-<preset>`` when it exists, else ``prepare``."""
    return f"prepare-{config.preset}" if config.preset and config.preset != "toy" else "prepare"


def project_root() -> Path:
    """The DVC project around the working directory (ConfigError outside one)."""
    root = find_dvc_root(Path.cwd())
    if root is None:
        raise ConfigError(f"{Path.cwd()} is not inside a DVC project (no .dvc folder): run the pipeline from "
                          "the sdm checkout, or `dvc init` a project with the sdm dvc.yaml")
    return root


def _stage_up_to_date(stage: str, root: Path) -> bool:
    """DVC's own decision: is ``stage`` (and what it depends on) unchanged since the last repro?"""
    if not (root / "dvc.lock").exists():
        return False
    proc = subprocess.run([*dvc_command(), "status", "--json", stage], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        return False
    try:
        return json.loads(proc.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


@task(name="prepare-data")
def prepare_data(config: Config) -> dict[str, Any]:
    """``dvc repro`` the dataset's prepare stage unless DVC says it is up to date."""
    logger = get_run_logger()
    root = project_root()
    stage = stage_for(config)
    if stage not in stage_names(root):
        raise ConfigError(f"{root / 'dvc.yaml'} has no stage {stage!r}; data/README.md shows how to add one")
    unchanged = _stage_up_to_date(stage, root) and stage_out(root, stage).exists()
    if unchanged:
        logger.info("data unchanged (dvc status %s is clean): preparation skipped", stage)
    else:
        logger.info("dvc repro %s", stage)
        run_dvc(["repro", stage], root)
    info = data_version_info(stage_out(root, stage))
    info["cached"] = unchanged
    info["prepared"] = str(stage_out(root, stage))
    logger.info("data version %s", info["version"])
    return info


# A push talks to a remote (S3, SSH, ...): transient failures are retried.
@task(name="push-data", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=transient_only)
def push_data(config: Config) -> None:
    root = project_root()
    run_dvc(["push", "--with-deps", stage_for(config)], root)


def run_name_for_flow(prefix: str = "retrain") -> str:
    """``<prefix>-<flow run id>``: a retried flow run keeps its id, so it resumes its own training run."""
    run_id = flow_run.get_id() or "local"
    return f"{prefix}-{run_id}"


@task(name="train")
def train_model(config: Config, run_name: str, workers: int | None = None) -> dict[str, Any]:
    # Imported at call time: importing the flows (e.g. for `sdm pipeline --help`) stays cheap.
    from sdm.train import train

    logger = get_run_logger()
    result = train(config, run_name=run_name, workers=workers, echo=logger.info)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.final_dir), "step": result.global_step,
            "mlflow_run_id": result.mlflow_run_id}


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """sha256 over the checkpoint's weights and config (what the evaluation depends on)."""
    h = hashlib.sha256()
    ckpt = Path(checkpoint)
    for name in ("model.safetensors", "ema.safetensors", "config.json"):
        path = ckpt / name
        if path.exists():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def evaluation_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The evaluation's cache key: checkpoint content, data version, evaluate/sample settings, output folder."""
    config: Config = parameters["config"]
    settings = json.dumps({"evaluate": to_dict(config.evaluate), "sample": to_dict(config.sample)}, sort_keys=True)
    parts = [checkpoint_fingerprint(parameters["checkpoint"]), parameters["data_version"],
             hashlib.sha256(settings.encode()).hexdigest(), str(Path(parameters["out"]).resolve())]
    return "evaluate-" + hashlib.sha256("|".join(parts).encode()).hexdigest()


@task(name="evaluate", cache_key_fn=evaluation_cache_key, persist_result=True)
def evaluate_checkpoint(config: Config, checkpoint: str, data: str, data_version: str, out: str) -> dict[str, Any]:
    from sdm.eval.runner import EvalRequest, run_evaluation

    logger = get_run_logger()
    req = EvalRequest(checkpoint=Path(checkpoint), data=Path(data), out=Path(out))
    return run_evaluation(req, config, log=logger.info)


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def register_model(config: Config, checkpoint: str, metrics_file: str, promote: bool) -> dict[str, Any]:
    # Looked up at call time (not bound at import), so the pipeline test can inject a transient failure.
    from sdm.registry.register import register_checkpoint

    logger = get_run_logger()
    result = register_checkpoint(checkpoint, metrics_file, config, promote=promote)
    decision = result.promotion.decision if result.promotion else "not asked"
    logger.info("registered %s version %s (aliases %s; promotion: %s)", result.name, result.version,
                result.aliases, decision)
    return {"name": result.name, "version": result.version, "model_uri": result.model_uri,
            "aliases": sorted(a for a, v in result.aliases.items() if str(v) == str(result.version)),
            "decision": decision, "reason": getattr(result.promotion, "reason", "")}
