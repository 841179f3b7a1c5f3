"""Shared fixtures: the quiet/offline env, temp homes for Prefect, MLflow, DVC and sdm's cache.

Expensive set-ups are paid once per session: the MLflow sqlite migration
(copied per test) and the Prefect test harness (only for flow tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdm.env import apply_quiet_offline_env

apply_quiet_offline_env()

# Temp homes must be in place before Prefect / DVC are first imported.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="sdm-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["DVC_SITE_CACHE_DIR"] = str(_SESSION_HOME / "dvc-site-cache")
# Evaluation segmenters are cached per data version: never in (or from) the user's ~/.cache/sdm.
os.environ["SDM_CACHE_DIR"] = str(_SESSION_HOME / "sdm-cache")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
# Ray's temp folder (sessions, sockets, and the pointer `ray start` leaves, which a bare ray.init() would follow)
# is the session's own: no cluster started on this machine outside the tests is ever seen or joined.
os.environ["RAY_TMPDIR"] = str(_SESSION_HOME / "rt")

REPO_ROOT = Path(__file__).resolve().parents[1]

# A real two-node Ray cluster (ray start head + a joined node), once per session: see tests/_ray_cluster.py.
# The toy config and U-Net (every weight random), once per module, for the sampling tests.
from _model_helpers import toy, toy_model  # noqa: E402, F401
from _ray_cluster import ray_head, two_node_cluster  # noqa: E402, F401

# A real MLflow tracking server (session-scoped) for outage tests: see tests/_servers.py.
from _servers import live_mlflow, mlflow_server  # noqa: E402, F401


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def _mlflow_template(session_home: Path) -> Path:
    """An MLflow sqlite store migrated once per session (~6 s)."""
    import mlflow

    db = session_home / "mlflow-template.db"
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.search_experiments()  # runs the migrations
    return db


@pytest.fixture
def mlflow_uri(_mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh per-test MLflow store (a copy of the migrated template)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SDM_MLFLOW_ARTIFACTS", str(tmp_path / "mlflow-artifacts"))
    return uri


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's ephemeral test server, started once per session (~10-15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    # A loaded machine (CI, parallel jobs) can take longer than Prefect's 30 s default to start it.
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole session (~5 s to start), as ``sdm train`` starts it (under the
    session's RAY_TMPDIR)."""
    import ray

    from sdm.train.ray_run import ensure_ray

    started = ensure_ray()
    yield
    if started:
        ray.shutdown()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
