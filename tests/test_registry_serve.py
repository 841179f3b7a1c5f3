"""The registered champion serves with `mlflow models serve --env-manager local` and answers a label map."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _registry_helpers import make_checkpoint, tiny_config, write_metrics

from sdm.registry.register import register_checkpoint

NAME = "sdm-serve-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _wait_for_ping(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer /ping in {limit_s} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_champion_serves_and_answers_a_label_map(mlflow_uri: str, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "final")
    metrics = write_metrics(tmp_path / "metrics.json", {"fsd@1.5": 0.4})
    result = register_checkpoint(checkpoint, metrics, tiny_config(), name=NAME, promote=True)
    assert result.aliases["champion"] == int(result.version)

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri,
           # `mlflow models serve` starts uvicorn from PATH: the interpreter's own bin folder.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_ping(f"{base}/ping", proc, log)
        labels = np.random.default_rng(0).integers(0, 5, (8, 8))
        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"labels": labels.tolist()}],
                                                    "params": {"steps": 2, "seed": 1}})
        assert status == 200, body
        images = np.asarray(body["predictions"])
        assert images.shape == (1, 8, 8, 3)
        assert images.min() >= 0 and images.max() <= 255 and np.issubdtype(images.dtype, np.integer)

        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"labels": np.full((8, 8), 9).tolist()}]})
        assert status == 400 and "label map 0 has value 9" in body.get("message", ""), body

        # Over the request limits stored with the version (register.serving defaults): 400 naming the limit.
        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"labels": labels.tolist()}] * 17})
        assert status == 400 and "at most 16 per request (register.serving.max_rows)" in body.get("message", ""), body
        status, body = _post(f"{base}/invocations", {"dataframe_records": [{"labels": labels.tolist()}],
                                                    "params": {"steps": 5000}})
        assert status == 400 and "limit of 1000 (register.serving.max_steps)" in body.get("message", ""), body
    finally:
        proc.terminate()  # the scoring server (its child) gets SIGTERM when this process dies
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
