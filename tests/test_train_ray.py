"""``sdm train`` on Ray Train: a 2-worker TorchTrainer run, a rerun that resumes, a worker killed once."""

from __future__ import annotations

import _train_helpers
import pytest
import torch
from _train_helpers import FAULT_MARKER, ExitAtStep, make_prepared, tiny_config
from safetensors.torch import load_file

from sdm.model import read_checkpoint_meta
from sdm.train.events import read_run_log
from sdm.train.launch import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("train-ray"))


def _weights(final):
    return load_file(str(final / "model.safetensors"))


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def plain_run(prepared, storage, ray_cluster):
    """A 2-worker run of the tiny config: 6 pretrain + 4 finetune steps, checkpoints every 3."""
    lines: list[str] = []
    result = train(tiny_config(prepared, storage), run_name="plain", workers=2, log_mlflow=False, echo=lines.append)
    return result, lines


def test_two_worker_run_trains_both_phases_and_exports(plain_run):
    result, lines = plain_run
    meta = read_checkpoint_meta(result.final_dir)
    assert meta["step"] == 10 and meta["world_size"] == 2 and len(meta["class_names"]) == 12
    from sdm.registry.lineage import git_commit

    assert meta["git_commit"] == git_commit()  # the code that trained it (lineage.train_git_commit)
    events = read_run_log(result.run_dir)
    assert [e["global_step"] for e in events if e["event"] == "log"] == [2, 4, 6, 8, 10]
    assert [e["path"].rsplit("/", 1)[-1] for e in events if e["event"] == "checkpoint"] == [
        "checkpoint-pretrain-0000003", "checkpoint-pretrain-0000006",
        "checkpoint-finetune-0000003", "checkpoint-finetune-0000004"]
    kept = sorted(p.name for p in result.run_dir.glob("checkpoint-*"))
    assert kept == ["checkpoint-finetune-0000003", "checkpoint-finetune-0000004"]  # keep_checkpoints=2
    assert any("pretrain 2/6 | run 2/10 | loss" in line and "img/s | ETA" in line for line in lines)
    assert (result.run_dir / "samples" / "finetune-0000004-s1.5.png").exists()


def test_rerun_resumes_and_logs_to_the_same_mlflow_run(prepared, storage, plain_run, mlflow_uri):
    # A new run logged to MLflow: 4 pretrain steps, then the same command with 2 more steps resumes at 4.
    import mlflow

    cfg = tiny_config(prepared, storage, "train.finetune.steps=0", "train.checkpoint_every=2")
    cfg4 = tiny_config(prepared, storage, "train.pretrain.steps=4", "train.finetune.steps=0",
                       "train.checkpoint_every=2")
    one = train(cfg4, run_name="mlflow", workers=2, echo=lambda s: None)
    lines: list[str] = []
    two = train(cfg, run_name="mlflow", workers=2, echo=lines.append)
    assert two.mlflow_run_id == one.mlflow_run_id
    assert any("resuming at step 4/6 from checkpoint-pretrain-0000004" in line for line in lines)
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(one.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["sdm.data_version"] and run.data.params["train.batch_size"] == "4"
    loss = client.get_metric_history(one.mlflow_run_id, "loss")
    assert [m.step for m in loss] == [2, 4, 6]  # no step lost or repeated
    assert {"loss_q0", "lr", "grad_norm", "img_per_s"} <= set(run.data.metrics)
    artifacts = [a.path for a in client.list_artifacts(one.mlflow_run_id, "samples")]
    assert "samples/pretrain-0000004-s1.png" in artifacts and "samples/pretrain-0000006-s1.png" in artifacts
    assert read_checkpoint_meta(two.final_dir)["mlflow_run_id"] == one.mlflow_run_id


def test_a_worker_killed_once_restarts_from_the_checkpoint_before(prepared, storage, plain_run):
    result_plain, _ = plain_run
    import ray.cloudpickle

    # The Ray workers cannot import tests/: the fault hook travels to them by value.
    ray.cloudpickle.register_pickle_by_value(_train_helpers)
    cfg = tiny_config(prepared, storage)
    result = train(cfg, run_name="fault", workers=2, log_mlflow=False, echo=lambda s: None,
                   worker_hooks=[ExitAtStep(5, storage / "fault" / FAULT_MARKER)])
    assert (result.run_dir / FAULT_MARKER).exists()
    starts = [e for e in read_run_log(result.run_dir) if e["event"] == "phase_start"]
    assert [(e["phase"], e["start_step"], e["resumed_from"]) for e in starts] == [
        ("pretrain", 0, ""),
        ("pretrain", 3, "checkpoint-pretrain-0000003"),  # rank 1 died before step 6; the checkpoint before is 3
        ("finetune", 0, ""),
    ]
    assert read_checkpoint_meta(result.final_dir)["step"] == 10
    # The restarted run ends exactly where the uninterrupted one did.
    a, b = _weights(result.final_dir), _weights(result_plain.final_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
