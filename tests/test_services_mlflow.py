"""The pipeline on an MLflow tracking server (issue 17, item 1): a real ``mlflow server`` on loopback.

The session's server (tests/_servers.py: sqlite backend, ``--artifacts-destination`` in a temp folder,
artifacts served through the server) takes the whole chain: Ray training with 2 workers logs to it, the
evaluation logs to the training run, the checkpoint is registered and promoted, ``sdm sample --model
models:/NAME@champion`` and ``mlflow models serve`` load the champion from it. Both ways of pointing at the
server are used: ``register.tracking_uri`` (the config) for training, evaluation and registration, the
``MLFLOW_TRACKING_URI`` environment for the two CLIs. Artifacts go through the server: every artifact URI is
``mlflow-artifacts:/...`` and the server's access log shows the downloads the CLIs made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _servers import ServerProcess, free_port
from _train_helpers import make_prepared, tiny_config

from sdm.services import ServiceError
from sdm.train.preflight import preflight

BIN = Path(sys.executable).parent
NAME = "sdm-on-server"
EVAL = ["evaluate.guidance_scales=[1.5]", "evaluate.steps=2", "evaluate.num_samples=4", "evaluate.repeats=1",
        "evaluate.steps_sweep=[]", "evaluate.segmenter.steps=3", "evaluate.segmenter.batch_size=4",
        "evaluate.segmenter.width=8", "evaluate.min_kid_samples=1000"]


def _cli_env(uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SDM_MLFLOW_ARTIFACTS", None)
    return env


def _wait_ping(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 240) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve did not answer {url} in {limit_s} s:\n{log.read_text()[-3000:]}")


def walk_chain(uri: str, server_log: Path, server_artifacts: Path, tmp_path: Path) -> None:
    """Train on Ray -> evaluate -> register + promote -> sdm sample --model -> mlflow models serve, on ``uri``."""
    import mlflow

    from sdm.eval.runner import EvalRequest, run_evaluation
    from sdm.registry.register import register_checkpoint
    from sdm.train.launch import train

    prepared = make_prepared(tmp_path / "data", n=12)
    config = tiny_config(prepared, tmp_path / "runs", "train.pretrain.steps=2", "train.finetune.steps=2",
                         "train.checkpoint_every=2", *EVAL, f"register.tracking_uri={uri}",
                         f"register.model_name={NAME}")
    lines: list[str] = []
    result = train(config, run_name="on-server", workers=2, echo=lines.append)
    assert result.mlflow_run_id, lines
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4], lines
    assert run.data.params["sdm.workers"] == "2"

    out = tmp_path / "eval"
    doc = run_evaluation(EvalRequest(checkpoint=result.final_dir, data=prepared, out=out), config, log=lines.append)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["miou_at_1.5"] == pytest.approx(doc["miou@1.5"])
    assert "evaluation/metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}

    reg = register_checkpoint(result.final_dir, out / "metrics.json", config, name=NAME, promote=True)
    assert reg.aliases.get("champion") == int(reg.version) or str(reg.aliases.get("champion")) == reg.version
    version = client.get_model_version(NAME, reg.version)
    assert version.source.startswith(("models:/", "mlflow-artifacts:/")), version.source
    # The server stored what went through it, under its --artifacts-destination.
    assert list(server_artifacts.rglob("metrics.json"))

    before = len(server_log.read_text().splitlines())
    samples = tmp_path / "samples"
    labels = prepared.parent / "labels"
    labels.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 12, (32, 32)).astype(np.uint8), mode="L").save(
        labels / "a.png")
    proc = subprocess.run([str(BIN / "sdm"), "sample", "--model", f"models:/{NAME}@champion", "--labels",
                           str(labels), "--out", str(samples), "--steps", "2"], cwd=tmp_path, env=_cli_env(uri),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (samples / "a.png").is_file() and (samples / "grid.png").is_file()
    downloads = [line for line in server_log.read_text().splitlines()[before:]
                 if "/mlflow-artifacts/artifacts/" in line and "GET" in line]
    assert downloads, "sdm sample --model read no artifact through the server"

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        serve = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
                                  "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                 cwd=tmp_path, env=_cli_env(uri), stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        _wait_ping(f"http://127.0.0.1:{port}/ping", serve, log)
        body = json.dumps({"dataframe_records": [{"labels": np.zeros((32, 32), int).tolist()}],
                           "params": {"steps": 2, "seed": 1}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            images = np.asarray(json.loads(r.read())["predictions"])
        assert images.shape == (1, 32, 32, 3) and images.dtype.kind in "iu"
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)


@pytest.mark.slow
def test_the_chain_on_a_tracking_server(live_mlflow: ServerProcess, ray_cluster: None, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the config names the server; the CLIs get the env
    walk_chain(live_mlflow.url, live_mlflow.log_file, live_mlflow.log_file.parent / "artifacts", tmp_path)


def test_training_preflight_refuses_a_tracking_server_that_does_not_answer(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = make_prepared(tmp_path / "data", n=12)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = tiny_config(prepared, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "r"
    with pytest.raises(ServiceError) as e:
        preflight(config, run_dir, workers=1, phases=["pretrain"], ray=False, tracking=True)
    assert uri in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value) and "--no-mlflow" in str(e.value)
    assert not run_dir.exists()
    # Without tracking (--no-mlflow) the same run passes preflight.
    preflight(config, run_dir, workers=1, phases=["pretrain"], ray=False, tracking=False)
