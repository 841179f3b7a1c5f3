"""Where MLflow lives: the tracking URI, the artifact folder, experiments, metric names.

The embedded default is a sqlite store at ``<repo>/mlflow/mlflow.db`` with run
and model artifacts in ``<repo>/mlflow/artifacts`` (both gitignored). A user
outgrows it by setting ``MLFLOW_TRACKING_URI`` (a tracking server, or another
sqlite file) or ``register.tracking_uri`` in params.yaml; the environment wins.
MLflow's file store is refused by MLflow 3.x, so local stores are always sqlite.

``SDM_MLFLOW_ARTIFACTS`` overrides the artifact folder used for experiments this
module creates (the tests point it at a temporary directory).

MLflow's HTTP client retries a refused connection for about four minutes by
default (7 retries, doubling waits) and waits 120 s for a reply: right for a
rate-limited server, wrong for a training driver whose tracking server is down.
:func:`bounded_http` shortens both for the calls made inside it, unless the user
set them (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` / ``..._BACKOFF_FACTOR``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdm.config import Config

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACTS = "SDM_MLFLOW_ARTIFACTS"


def repo_root() -> Path:
    """The checkout holding this package (where ``mlflow/`` and params.yaml live), else the working dir."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def default_store_dir() -> Path:
    return repo_root() / "mlflow"


def default_tracking_uri() -> str:
    """``sqlite:///<repo>/mlflow/mlflow.db`` (an absolute path, so it works from any directory)."""
    return f"sqlite:///{default_store_dir() / 'mlflow.db'}"


def tracking_uri(config: Config | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``config.register.tracking_uri``, else the sqlite default."""
    env = os.environ.get(ENV_URI, "").strip()
    if env:
        return env
    if config is not None and config.register.tracking_uri.strip():
        return config.register.tracking_uri.strip()
    return default_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifacts_dir(uri: str) -> Path | None:
    """The local artifact folder for experiments in store ``uri``.

    ``SDM_MLFLOW_ARTIFACTS`` when set; for a local sqlite store, ``artifacts/``
    beside the database file (``mlflow/artifacts`` for the default store);
    None for a tracking server, which decides where artifacts go.
    """
    env = os.environ.get(ENV_ARTIFACTS, "").strip()
    if env:
        return Path(env).resolve()
    db = _sqlite_path(uri)
    if db is None:
        return None
    return db.resolve().parent / "artifacts"


def configure(config: Config | None = None) -> str:
    """Point MLflow's fluent API at our store; returns the URI. Call it before each use of MLflow.

    MLflow keeps the URI in a process global, so every sdm entry point calls
    this again rather than trusting an earlier call. The registry URI is left
    unset: it then follows the tracking URI (an explicitly set one would go stale).
    """
    import mlflow

    uri = tracking_uri(config)
    db = _sqlite_path(uri)
    if db is not None:
        # sqlite creates the file but not its folder.
        db.resolve().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, config: Config | None = None) -> str:
    """The id of experiment ``name``, created when missing (artifacts in :func:`artifacts_dir`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = configure(config)
    client = mlflow.MlflowClient(tracking_uri=uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    folder = artifacts_dir(uri)
    location = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our look-up and create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


def metric_key(key: str) -> str:
    """An MLflow-safe metric/tag name: ``fid@1.5`` -> ``fid_at_1.5`` (MLflow refuses ``@``)."""
    return _BAD_KEY_CHARS.sub("_", key.replace("@", "_at_"))


HTTP_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
HTTP_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"


@contextmanager
def bounded_http(max_retries: int = 2, timeout_s: int = 15, backoff_factor: int = 1) -> Iterator[None]:
    """MLflow HTTP calls made inside give up after ``max_retries`` quick retries and ``timeout_s`` per reply.

    MLflow reads these settings from the environment at each request, so they
    are set in ``os.environ`` for the duration (the whole process sees them)
    and restored after; a value the user set is left as it is."""
    wanted = {HTTP_MAX_RETRIES: str(max_retries), HTTP_TIMEOUT: str(timeout_s), HTTP_BACKOFF: str(backoff_factor)}
    ours = {k: v for k, v in wanted.items() if not os.environ.get(k, "").strip()}
    os.environ.update(ours)
    try:
        yield
    finally:
        for k, v in ours.items():
            if os.environ.get(k) == v:
                del os.environ[k]
