"""End to end: the Prefect `retrain` flow on tiny settings in a temp git + DVC project.

One test (the whole pipeline is the expensive part): run 1 prepares, trains,
evaluates, registers and promotes; run 2 with unchanged data skips preparation,
is forced to train (unforced it would be up to date: test_retrain_decide_flow.py),
survives one transient registration failure (Prefect retries the task) and
registers version 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from sdm.config import resolve, to_dict

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

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


def test_retrain_end_to_end_twice(project: Path, mlflow_uri: str, prefect_harness: None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    from flows.retrain import retrain

    first = retrain(push=True)
    # A prepared, DVC-tracked dataset (in dvc.lock, pushed to the remote).
    prepared = Path(first["prepared"])
    assert (prepared / "manifest.json").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["outs"][0]["path"] == "data/prepared/synthetic"
    assert any((project.parent / "remote").rglob("*")), "dvc push left nothing in the remote"
    assert first["data_version"].startswith("dvc:") and not first["data_cached"]
    # A registered version with its aliases and metrics.
    reg = first["registration"]
    assert reg["version"] == "1" and {"candidate", "champion"} <= set(reg["aliases"])
    metrics = json.loads((Path(first["evaluation"]) / "metrics.json").read_text())
    assert "miou@1.5" in metrics and "fid@1.5" not in metrics  # FID skipped without Inception weights
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    assert str(client.get_model_version_by_alias("sdm-pipeline-test", "champion").version) == "1"
    manifest_mtime = (prepared / "manifest.json").stat().st_mtime

    # Run 2: unchanged data -> preparation skipped; one transient MLflow failure -> retried.
    import sdm.registry.register as register_module

    real = register_module.register_checkpoint
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("tracking server unavailable (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(register_module, "register_checkpoint", flaky)
    second = retrain(push=True, force=True)
    assert second["data_cached"] and second["data_version"] == first["data_version"]
    assert (prepared / "manifest.json").stat().st_mtime == manifest_mtime
    assert calls["n"] == 2, "the failed registration was not retried"
    assert second["registration"]["version"] == "2"
    assert second["run_name"] != first["run_name"]

    # The artifacts: a markdown summary per run with the data version and the promotion decision.
    import asyncio

    async def summaries() -> list[str]:
        async with get_client() as c:
            arts = await c.read_artifacts()
            return [a.data for a in arts if a.key == "retrain-summary"]

    docs = asyncio.run(summaries())
    assert len(docs) >= 2
    assert all(first["data_version"] in d for d in docs)
    assert any("data:image/png;base64," in d for d in docs), "the sample grid is not in the summary"
