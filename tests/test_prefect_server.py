"""A real Prefect server runs the `retrain` schedule: `prefect server start` + `sdm pipeline serve`.

The server gets its own PREFECT_HOME and sqlite database on a free loopback port; the tiny
pipeline project of test_pipeline_flow.py gets a prefect.yaml whose `retrain-nightly`
deployment fires every few seconds (an interval instead of the nightly cron). The test waits
on the server's REST API for two scheduled runs: the first trains and registers the champion,
the second finds nothing changed and ends "up to date" with no new version. Every process the
test starts is stopped by its pid (its own process group).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml
from test_pipeline_flow import BIN, project  # noqa: F401  (the project fixture)

pytestmark = pytest.mark.slow

INTERVAL_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT, then SIGKILL, to the process group this test started (the process and its children)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A `prefect server start` of its own: (API URL, the environment variables that point at it)."""
    home = tmp_path / "prefect-server-home"
    home.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # Schedule and poll every 2 s, not every 60 / 10 s: the test waits for two runs.
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    log = tmp_path / "prefect-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{_tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prefect server not healthy after 180 s:\n{_tail(log)}"
            time.sleep(1)
        yield url, env
    finally:
        _stop(proc)


def _flow_runs(url: str) -> list[dict]:
    resp = httpx.post(f"{url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC", "limit": 50}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _summary(url: str, flow_run_id: str) -> str:
    resp = httpx.post(f"{url}/artifacts/filter", json={"artifacts": {"key": {"any_": ["retrain-summary"]}},
                                                       "flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30)
    resp.raise_for_status()
    docs = [a["data"] for a in resp.json()]
    assert docs, f"flow run {flow_run_id} left no retrain-summary artifact"
    return docs[-1]


def test_scheduled_retrain_on_a_prefect_server(project: Path, mlflow_uri: str,  # noqa: F811
                                               prefect_server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = prefect_server
    spec = {"name": "sdm-test", "deployments": [{
        "name": "retrain-nightly", "entrypoint": "flows/retrain.py:retrain",
        "parameters": {"push": False}, "schedules": [{"interval": INTERVAL_S}]}]}
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec))
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen([str(BIN / "sdm"), "pipeline", "serve"], cwd=project, env={**os.environ, **env},
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 540
        while True:
            assert serve.poll() is None, f"sdm pipeline serve exited ({serve.returncode}):\n{_tail(log)}"
            runs = _flow_runs(url)
            bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not bad, f"a scheduled run failed: {bad[0]['state_name']}\n{_tail(log, 120)}"
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            if len(done) >= 2:
                break
            assert time.monotonic() < deadline, f"fewer than 2 completed runs after 540 s:\n{_tail(log, 120)}"
            time.sleep(3)
    finally:
        _stop(serve)
    first, second = sorted(done, key=lambda r: r["start_time"])[:2]
    print(f"scheduled runs: train {first['total_run_time']:.1f} s, up to date {second['total_run_time']:.1f} s")
    assert first["deployment_id"] and first["deployment_id"] == second["deployment_id"]
    assert first["auto_scheduled"] and second["auto_scheduled"], "the runs were not made by the schedule"
    one = _summary(url, first["id"])
    two = _summary(url, second["id"])
    assert "**decision**: scratch" in one and "models:/sdm-pipeline-test/1" in one
    assert "# sdm retrain: up to date" in two and "champion v1 was trained on this data" in two
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    assert [str(v.version) for v in client.search_model_versions("name='sdm-pipeline-test'")] == ["1"]
