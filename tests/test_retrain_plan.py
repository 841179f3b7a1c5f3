"""The retrain decision (``sdm.registry.retrain_plan``) against a real MLflow registry, without training.

Champions are registered with ``register_checkpoint`` (a tiny real checkpoint) and the
fingerprint tags a retrain run would give them; the plan is then asked what to do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _registry_helpers import make_checkpoint, tiny_config, write_metrics

from sdm.config import Config
from sdm.errors import InputError
from sdm.registry.fingerprint import code_hash, data_hash, fingerprint, training_params
from sdm.registry.register import register_checkpoint
from sdm.registry.retrain_plan import CONTINUE, RESUME, SCRATCH, UP_TO_DATE, RetrainPlanError, plan_retrain

DATA_V1 = "dvc:aaaaaaaaaaaa@111111111111"
DATA_V2 = "dvc:bbbbbbbbbbbb@111111111111"


def _config(tmp_path: Path, *extra: str) -> Config:
    return tiny_config(f"train.storage_path={tmp_path / 'runs'}", "register.model_name=sdm-plan-test", *extra)


def _register_champion(tmp_path: Path, config: Config, data_version: str, promote: bool = True) -> str:
    """Register a tiny checkpoint with the fingerprint tags of ``config`` on ``data_version``; returns its version."""
    # Another seed per checkpoint: registering the same weights twice gives one version (idempotent).
    n = len(list(tmp_path.glob("ckpt-*")))
    ckpt = make_checkpoint(tmp_path / f"ckpt-{n}", seed=n)
    metrics = write_metrics(tmp_path / "metrics.json", {"fsd@1.5": 1.0, "miou@1.5": 0.5})
    plan_tags = fingerprint(config, data_version).tags()
    result = register_checkpoint(ckpt, metrics, config, promote=promote, extra_tags=plan_tags)
    return result.version


def test_fingerprint_ignores_what_changes_no_weight(tmp_path: Path) -> None:
    base = tiny_config()
    same = tiny_config("train.workers=4", "train.storage_path=/elsewhere", "train.log_every=7",
                       "train.checkpoint_every=3", "model.use_checkpoint=true", "evaluate.steps=9")
    assert training_params(base) == training_params(same)
    for change in ("train.pretrain.lr=0.5", "model.model_channels=64", "diffusion.noise_schedule=cosine",
                   "data.random_flip=false", "train.seed=3"):
        assert training_params(tiny_config(change)) != training_params(base), change
    # The data part is the content hash: another git commit alone is the same data.
    assert data_hash("dvc:abc@111") == data_hash("dvc:abc@222") != data_hash("dvc:abd@111")
    # The code part covers every .py file's path and content.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = code_hash(pkg)
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert code_hash(pkg) != first
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    assert code_hash(pkg) == first
    (pkg / "sub" / "b.py").rename(pkg / "b2.py")
    assert code_hash(pkg) != first


def test_no_champion_trains_from_scratch_under_a_stable_name(mlflow_uri: str, tmp_path: Path) -> None:
    config = _config(tmp_path, "retrain.mode=continue")
    plan = plan_retrain(config, DATA_V1)
    assert (plan.action, plan.mode, plan.init_from) == (SCRATCH, SCRATCH, None)
    assert "no champion" in plan.reason
    assert plan.phases == ["pretrain", "finetune"]
    assert plan.run_name == plan_retrain(config, DATA_V1).run_name, "the run name must not depend on the call"
    assert plan.run_name.startswith("retrain-") and len(plan.run_name) == len("retrain-") + 12
    assert plan_retrain(config, DATA_V2).run_name != plan.run_name


def test_up_to_date_then_continue_then_scratch(mlflow_uri: str, tmp_path: Path) -> None:
    config = _config(tmp_path, "retrain.continue_steps=3")
    version = _register_champion(tmp_path, config, DATA_V1)

    same = plan_retrain(config, DATA_V1)
    assert same.action == UP_TO_DATE and not same.trains
    assert same.reason == (f"up to date: champion v{version} was trained on this data, these params and this code")
    forced = plan_retrain(config, DATA_V1, force=True)
    assert forced.trains and "-forced-" in forced.run_name

    # New data, same architecture: continue from the champion's downloaded checkpoint.
    cont = plan_retrain(config, DATA_V2)
    assert (cont.action, cont.mode) == (CONTINUE, CONTINUE)
    assert cont.init_uri == f"models:/sdm-plan-test/{version}"
    assert cont.init_from is not None and (Path(cont.init_from) / "model.safetensors").is_file()
    assert "data changed (dvc:aaaaaaaaaaaa -> dvc:bbbbbbbbbbbb)" in cont.reason
    assert cont.phases == ["finetune"] and cont.steps == {"finetune": 3}
    trained = cont.train_config(config)
    assert trained.train.phases == ["finetune"] and trained.train.finetune.steps == 3
    tags = cont.lineage_tags()
    assert tags["lineage.init_from"] == cont.init_uri and tags["lineage.retrain_action"] == CONTINUE
    assert tags["lineage.fingerprint.data"] == "dvc:bbbbbbbbbbbb"

    # Another architecture: auto trains from scratch and names the difference; continue refuses.
    wider = _config(tmp_path, "model.model_channels=64")
    scratch = plan_retrain(wider, DATA_V1)
    assert (scratch.action, scratch.init_from) == (SCRATCH, None)
    assert "model.model_channels 32 -> 64" in scratch.reason
    assert "params changed" in scratch.reason
    with pytest.raises(RetrainPlanError, match=r"retrain.mode continue: champion v1 .*model.model_channels 32 -> 64"):
        plan_retrain(_config(tmp_path, "model.model_channels=64", "retrain.mode=continue"), DATA_V1)
    # scratch asked for: no download needed, both phases.
    asked = plan_retrain(_config(tmp_path, "retrain.mode=scratch"), DATA_V2)
    assert asked.mode == SCRATCH and "retrain.mode is scratch" in asked.reason


def test_a_registered_but_not_promoted_version_is_up_to_date_too(mlflow_uri: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    _register_champion(tmp_path, config, DATA_V1)
    kept = _register_champion(tmp_path, config, DATA_V2, promote=False)
    plan = plan_retrain(config, DATA_V2)
    assert plan.action == UP_TO_DATE and plan.matching_version == kept
    assert "not promoted" in plan.reason and "--force" in plan.reason


def test_an_interrupted_run_is_resumed(mlflow_uri: str, tmp_path: Path) -> None:
    from sdm.train.checkpoint import CheckpointStore, TrainState
    from sdm.train.worker import build_model

    config = _config(tmp_path, "retrain.mode=scratch")
    plan = plan_retrain(config, DATA_V1)
    assert plan.action == SCRATCH
    run_dir = Path(config.train.storage_path) / plan.run_name
    model = build_model(config, torch.device("cpu"))
    state = TrainState(phase="pretrain", phase_index=0, step=2, phase_steps=config.train.pretrain.steps,
                       model=model.state_dict(), ema=model.state_dict(), ema_updates=2, optimizer=None,
                       config=dataclasses.asdict(config), data_version=DATA_V1)
    CheckpointStore(run_dir, keep=2).save(state)
    again = plan_retrain(config, DATA_V1)
    assert (again.action, again.mode, again.run_name) == (RESUME, SCRATCH, plan.run_name)
    assert "was interrupted at checkpoint-pretrain-0000002" in again.reason


def test_a_champion_without_a_config_is_a_clear_error(mlflow_uri: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    version = _register_champion(tmp_path, config, DATA_V1)
    stored = list((tmp_path / "mlflow-artifacts").rglob("checkpoint/config.json"))
    assert stored, "the registered checkpoint's config.json was not found in the artifact store"
    for path in stored:
        path.unlink()
    with pytest.raises(InputError, match=rf"the champion models:/sdm-plan-test/{version}: .*holds no sdm checkpoint"):
        plan_retrain(config, DATA_V2)


def test_init_from_a_registry_uri_that_does_not_resolve_stops_before_training(mlflow_uri: str,
                                                                              tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdm.cli import app

    storage = tmp_path / "runs"
    result = CliRunner().invoke(app, ["train", "--init-from", "models:/sdm-nope@champion", "--local", "--no-mlflow",
                                      "--set", f"train.storage_path={storage}"])
    assert result.exit_code == 2, result.output
    assert "--init-from models:/sdm-nope@champion: no registered model 'sdm-nope'" in result.output
    assert not storage.exists(), "training started before the bad --init-from was found"


def test_serve_without_a_reachable_server_fails_fast(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    sdm = Path(sys.executable).parent / "sdm"
    for url, expected in ((None, "PREFECT_API_URL is not set"),
                          (f"http://127.0.0.1:{port}/api", f"PREFECT_API_URL=http://127.0.0.1:{port}/api: no Prefect "
                                                           "server answers")):
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        if url:
            env["PREFECT_API_URL"] = url
        start = time.monotonic()
        proc = subprocess.run([str(sdm), "pipeline", "serve", "--prefect-yaml", str(repo / "prefect.yaml")],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert expected in proc.stderr
        assert time.monotonic() - start < 60
