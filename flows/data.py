"""Data tasks: make sure the raw data is there, let DVC decide whether to prepare, push, return the version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from flows.retry import transient_only
from sdm.config import Config, ConfigError
from sdm.data.version import data_version_info, find_dvc_root, run_dvc, stage_names, stage_out

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
    root = find_dvc_root(Path.cwd())
    if root is None:
        raise ConfigError(f"{Path.cwd()} is not inside a DVC project (no .dvc folder): run the pipeline from "
                          "the sdm checkout, or `dvc init` a project with the sdm dvc.yaml")
    return root


def _stage_up_to_date(stage: str, root: Path) -> bool:
    """DVC's own decision: is ``stage`` (and what it depends on) unchanged since the last repro?"""
    import json
    import subprocess

    from sdm.data.version import dvc_command

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
