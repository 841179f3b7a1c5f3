"""A registered version -> its tags and the ``reproduce/`` record of the training run that made it.

The record comes from the training run's MLflow artifacts (``reproduce/``); when the upload did not get
through (tracking is best-effort for training) the run folder's own copy (``lineage.train_run_path``)
is used while it still exists on this machine.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdm.errors import InputError
from sdm.registry.model_uri import resolve_version
from sdm.reproduce.record import RECORD_DIR, read_record

if TYPE_CHECKING:
    from sdm.config import Config


class NoRecordError(InputError):
    """A version whose training run recorded nothing to reproduce it from."""


@dataclass
class VersionRecord:
    """A registered version with its training run's record (``sdm.reproduce.record.read_record``)."""

    name: str
    version: str
    uri: str
    tags: dict[str, str]
    run_id: str
    folder: Path  # the downloaded (or the run folder's) reproduce/ folder
    record: dict[str, Any]
    source: str  # "mlflow" or "run folder"


def version_record(uri: str, dst: str | Path, config: Config | None = None, flag: str = "MODEL") -> VersionRecord:
    """The version ``uri`` names and its training run's ``reproduce/`` record, downloaded under ``dst``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, version, found = resolve_version(uri, config, flag)
    tags = dict(found.tags or {})
    run_id = tags.get("lineage.train_mlflow_run_id", "unknown")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tried = []
    if run_id not in ("", "unknown"):
        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RECORD_DIR,
                                                              dst_path=str(dst)))
            return VersionRecord(name, version, uri, tags, run_id, folder, read_record(folder), "mlflow")
        except (MlflowException, OSError) as e:
            tried.append(f"the training run {run_id} has no readable {RECORD_DIR}/ artifacts "
                         f"({type(e).__name__})")
    else:
        tried.append("the version records no training run (lineage.train_mlflow_run_id)")
    run_path = tags.get("lineage.train_run_path", "")
    local = Path(run_path) / RECORD_DIR if run_path and run_path != "unknown" else None
    if local is not None and local.is_dir():
        try:
            # Its own folder: never mixed with what a failed MLflow download may have left under dst.
            copy = Path(shutil.copytree(local, dst / "run-folder" / RECORD_DIR))
            return VersionRecord(name, version, uri, tags, run_id, copy, read_record(copy), "run folder")
        except FileNotFoundError as e:
            tried.append(str(e))
    else:
        tried.append(f"the run folder {run_path or '(unknown)'} has no {RECORD_DIR}/")
    raise NoRecordError(f"{flag} {uri}: version {version} of {name!r} cannot be reproduced: {'; '.join(tried)}. "
                        "Versions trained before sdm recorded reproduce/ (or whose run folder is gone while "
                        "tracking was down) lack what re-creation needs")
