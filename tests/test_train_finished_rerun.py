"""``sdm train`` on a finished run folder: final/ is exported in the driver, no Ray cluster is started for 0 steps.

A finished tiny ``--local`` run (logged to MLflow), then the same run again with Ray requested (2 workers,
as the README's rerun asks for Ray): ray.init / the Ray launch are spies that fail the test if called; the
final weights stay byte for byte, the MLflow run is the same one, continued and finished again. The
decision itself: a run with steps left, a checkpoint of another phase, or a newest checkpoint that is
corrupted (the intact one before it has steps left) still goes to Ray.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import TINY, make_prepared, one_thread, tiny_config

from sdm.model import read_checkpoint_meta
from sdm.train.events import read_run_log
from sdm.train.finished import finished_resume_point, steps_left

SDM = str(Path(sys.executable).parent / "sdm")
SHORT = ("train.pretrain.steps=2", "train.finetune.steps=2", "train.checkpoint_every=2", "train.log_every=1")
PHASES = ["pretrain", "finetune"]

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finals(final: Path) -> dict[str, str]:
    return {name: _sha256(final / name) for name in ("model.safetensors", "ema.safetensors")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("finished"), n=12)


@pytest.fixture(scope="module")
def done_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2 + 2 step ``--local`` run (no MLflow) the decision tests copy."""
    from sdm.train.launch import train

    storage = tmp_path_factory.mktemp("runs")
    train(tiny_config(prepared, storage, *SHORT), run_name="done", local=True, log_mlflow=False, echo=lambda s: None)
    return storage / "done"


class _Forbidden:
    """A stand-in for a Ray entry point: records the call and fails it."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        raise AssertionError(f"{self.name} was called for a run with nothing left to train")


def test_rerun_of_a_finished_run_exports_final_without_ray(prepared, tmp_path, mlflow_uri, monkeypatch):
    import mlflow
    import ray

    import sdm.train.ray_run as ray_run
    from sdm.train.launch import train

    cfg = tiny_config(prepared, tmp_path / "runs", *SHORT)
    first = train(cfg, run_name="toy", local=True, echo=lambda s: None)
    before = _finals(first.final_dir)
    meta_before = read_checkpoint_meta(first.final_dir)

    spies = [_Forbidden("ray.init"), _Forbidden("ensure_ray"), _Forbidden("run_on_ray")]
    monkeypatch.setattr(ray, "init", spies[0])
    monkeypatch.setattr(ray_run, "ensure_ray", spies[1])
    monkeypatch.setattr(ray_run, "run_on_ray", spies[2])
    lines: list[str] = []
    again = train(cfg, run_name="toy", workers=2, echo=lines.append)

    assert [s.calls for s in spies] == [0, 0, 0]
    assert again.final_dir == first.final_dir and _finals(again.final_dir) == before
    meta = read_checkpoint_meta(again.final_dir)
    assert {k: meta[k] for k in ("step", "ema_updates", "phases", "mlflow_run_id", "data_version")} == \
        {k: meta_before[k] for k in ("step", "ema_updates", "phases", "mlflow_run_id", "data_version")}
    text = "\n".join(lines)
    assert "Ray not started" in text and "resuming from checkpoint-finetune-0000002" in text, text
    assert f"MLflow run {first.mlflow_run_id} (continued)" in text
    assert f"done: 4 steps; final checkpoint {first.final_dir}" in text
    assert not any("| loss" in line for line in lines)  # not one step trained

    assert again.mlflow_run_id == first.mlflow_run_id
    run = mlflow.MlflowClient(mlflow_uri).get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sdm.final_checkpoint"] == str(first.final_dir)
    ends = [e for e in read_run_log(first.run_dir) if e["event"] == "end"]
    assert len(ends) == 2 and ends[-1]["resumed_from"] == "checkpoint-finetune-0000002"
    assert not [e for e in read_run_log(first.run_dir) if e["event"] == "worker"]  # no Ray worker was placed


@pytest.mark.slow
def test_cli_rerun_of_a_finished_run_needs_no_ray_cluster(done_run, prepared, tmp_path):
    """The CLI, with a RAY_ADDRESS where nothing answers: a rerun that trains nothing does not need it."""
    run_dir = tmp_path / "runs" / "done"
    shutil.copytree(done_run, run_dir)
    before = _finals(run_dir / "final")
    sets = [x for s in (*SHORT, f"data.prepared={prepared}", f"train.storage_path={tmp_path / 'runs'}")
            for x in ("--set", s)]
    tiny = [x for s in TINY for x in ("--set", s)]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    proc = subprocess.run([SDM, "train", *tiny, *sets, "--run-name", "done", "--workers", "1", "--no-mlflow"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray not started" in proc.stdout and "done: 4 steps" in proc.stdout
    assert _finals(run_dir / "final") == before


def test_a_run_with_steps_left_still_goes_to_ray(done_run, prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path, *SHORT)
    resume = finished_resume_point(cfg, done_run, PHASES)
    assert resume is not None and (resume.state.phase, resume.state.step, resume.name) == \
        ("finetune", 2, "checkpoint-finetune-0000002")
    longer = tiny_config(prepared, tmp_path, *SHORT, "train.finetune.steps=3")
    assert steps_left(longer, PHASES, "finetune", 2) == 1
    assert finished_resume_point(longer, done_run, PHASES) is None
    # Only pretrain planned, the newest checkpoint is finetune's: the workers' rules decide (an error there).
    assert steps_left(cfg, ["pretrain"], "finetune", 2) is None
    assert finished_resume_point(cfg, done_run, ["pretrain"]) is None
    # Only finetune planned (2 steps): the finetune checkpoint completes it.
    assert finished_resume_point(cfg, done_run, ["finetune"]) is not None
    assert finished_resume_point(cfg, tmp_path / "no-such-run", PHASES) is None


def test_a_corrupted_final_step_checkpoint_is_not_a_finished_run(done_run, prepared, tmp_path):
    run_dir = tmp_path / "done"
    shutil.copytree(done_run, run_dir)
    weights = run_dir / "checkpoint-finetune-0000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size: only the sha256 check finds it
    weights.write_bytes(bytes(data))
    # The intact checkpoint before it (pretrain 2) leaves the finetune steps: the run trains, on Ray.
    assert finished_resume_point(tiny_config(prepared, tmp_path, *SHORT), run_dir, PHASES) is None
