"""The tiny pipeline project and a real Prefect server, for the tests that run the `retrain` flow.

``project``: a temp git + DVC project with this repo's dvc.yaml and data code, tiny params and a
local DVC remote (``<tmp>/remote``); the cwd for the test. ``prefect_server``: a `prefect server
start` of its own (PREFECT_HOME, sqlite database, free loopback port), stopped by its pid (its
own process group). Imported by test_pipeline_flow.py and test_retrain_decide_flow.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sdm.config import resolve, to_dict

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = [
    "data.synth.n=24", "data.synth.size=32", "data.image_size=[16,16]", "data.val_fraction=0.25",
    "model.image_size=[16,16]", "model.model_channels=32", "model.channel_mult=[1,2]",
    "model.attention_resolutions=[8]", "model.num_heads=1", "model.spade_hidden=16",
    "train.pretrain.steps=4", "train.finetune.steps=2", "train.batch_size=4", "train.workers=1",
    "train.checkpoint_every=2", "train.log_every=2", "train.sample_every=100",
    "evaluate.guidance_scales=[1.0,1.5]", "evaluate.steps=3", "evaluate.num_samples=4", "evaluate.repeats=2",
    "evaluate.segmenter.steps=5", "evaluate.segmenter.batch_size=4", "evaluate.segmenter.width=8",
    "evaluate.min_fid_samples=10", "sample.steps=3", "register.model_name=sdm-pipeline-test",
    "retrain.continue_steps=2",
]


def sh(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project with this repo's dvc.yaml and data code, tiny params, a local remote."""
    proj = tmp_path / "project"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", proj / ".dvcignore")
    shutil.copytree(REPO / "sdm" / "data", proj / "sdm" / "data", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = resolve(overrides=TINY, params=None)
    params = to_dict(cfg)
    params.pop("preset")
    params["train"]["storage_path"] = str(tmp_path / "runs")
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], proj)
    sh([sys.executable, "-m", "dvc", "init", "-q"], proj)
    sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], proj)
    sh(["git", "add", "-A"], proj)
    sh(["git", "commit", "-qm", "init"], proj)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return proj


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT, then SIGKILL, to the process group a test started (the process and its children)."""
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


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A `prefect server start` of its own: (API URL, the environment variables that point at it)."""
    home = tmp_path / "prefect-server-home"
    home.mkdir()
    port = free_port()
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
            assert proc.poll() is None, f"prefect server exited ({proc.returncode}):\n{tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prefect server not healthy after 180 s:\n{tail(log)}"
            time.sleep(1)
        yield url, env
    finally:
        stop_group(proc)


def flow_runs(url: str) -> list[dict]:
    resp = httpx.post(f"{url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC", "limit": 50}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def server_summary(url: str, flow_run_id: str) -> str:
    """The `retrain-summary` markdown artifact a flow run left on the server."""
    resp = httpx.post(f"{url}/artifacts/filter", json={"artifacts": {"key": {"any_": ["retrain-summary"]}},
                                                       "flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30)
    resp.raise_for_status()
    docs = [a["data"] for a in resp.json()]
    assert docs, f"flow run {flow_run_id} left no retrain-summary artifact"
    return docs[-1]


def harness_summaries() -> list[str]:
    """Every `retrain-summary` artifact on the in-process Prefect API (the session's test harness)."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> list[str]:
        async with get_client() as c:
            return [a.data for a in await c.read_artifacts() if a.key == "retrain-summary"]

    return asyncio.run(read())
