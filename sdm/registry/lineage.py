"""Lineage of a registered version: which code, data, parameters and training run made it.

Every value is a string (MLflow tags are strings); a fact that cannot be known
is ``"unknown"``, never guessed. Tag names (``lineage.*``) are explained in
mlflow/README.md.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from sdm.tracking import repo_root

UNKNOWN = "unknown"

# The folder `sdm train` exports the final checkpoint to, inside its run folder.
FINAL_DIR = "final"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding the code, ``"unknown"`` outside git."""
    return _git("rev-parse", "HEAD", cwd=Path(cwd) if cwd else repo_root()) or UNKNOWN


def git_dirty(cwd: str | Path | None = None) -> str:
    """``"true"`` when the checkout has uncommitted changes to tracked files, ``"unknown"`` outside git."""
    out = _git("status", "--porcelain", "--untracked-files=no", cwd=Path(cwd) if cwd else repo_root())
    if out is None:
        return UNKNOWN
    return "true" if out else "false"


# The version tag keying a registered version by its weights: registering the same checkpoint again (a
# retry, a rerun) finds and completes that version instead of making another.
CHECKPOINT_SHA256_TAG = "sdm.checkpoint_sha256"
# The weights files a checkpoint is known by: the EMA weights (what sampling and the pyfunc use), else the raw.
_WEIGHTS_FILES = ("ema.safetensors", "model.safetensors")


def checkpoint_sha256(checkpoint_dir: str | Path) -> str:
    """sha256 (hex) of the checkpoint's EMA weights file (``ema.safetensors``; ``model.safetensors`` without one).

    Raises FileNotFoundError naming the folder when it has neither.
    """
    checkpoint_dir = Path(checkpoint_dir)
    for name in _WEIGHTS_FILES:
        path = checkpoint_dir / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
    raise FileNotFoundError(f"{checkpoint_dir}: no {' or '.join(_WEIGHTS_FILES)} to identify the checkpoint by")


def params_hash(config: dict[str, Any]) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def train_run_path(checkpoint_dir: Path, meta: dict[str, Any]) -> str:
    """The training run folder: ``<storage_path>/<run-name>`` for ``sdm train``'s ``.../<run-name>/final``
    (confirmed by meta.json's ``run_name``), else the checkpoint directory itself."""
    run_name = meta.get("run_name")
    if run_name and checkpoint_dir.name == FINAL_DIR and checkpoint_dir.parent.name == run_name:
        return str(checkpoint_dir.parent)
    return str(checkpoint_dir)


def lineage_tags(checkpoint_dir: str | Path, config: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    """The ``lineage.*`` tags of a checkpoint: code, data, parameters, training run.

    ``config`` is the checkpoint's resolved config (its config.json), ``meta``
    its meta.json (``{}`` when absent).
    """
    checkpoint_dir = Path(checkpoint_dir).resolve()
    data = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    run_path = train_run_path(checkpoint_dir, meta)
    tags = {
        "lineage.git_commit": git_commit(),
        "lineage.git_dirty": git_dirty(),
        "lineage.train_git_commit": str(meta.get("git_commit") or UNKNOWN),
        "lineage.data_version": str(meta.get("data_version") or UNKNOWN),
        "lineage.data_prepared": str(data.get("prepared") or UNKNOWN),
        "lineage.params_hash": params_hash(config),
        "lineage.checkpoint": str(checkpoint_dir),
        "lineage.train_run_path": run_path,
        "lineage.train_run_name": str(meta.get("run_name") or UNKNOWN),
        "lineage.train_mlflow_run_id": str(meta.get("mlflow_run_id") or UNKNOWN),
        "lineage.train_step": str(meta.get("step", UNKNOWN)),
        "lineage.preset": str(config.get("preset") or "none"),
        # What training started from (`sdm train --init-from`): a models:/ URI or a directory.
        "lineage.init_from": str(meta.get("init_from") or "none"),
    }
    return tags
