"""The training loop in one process on the real model, diffusion and prepared data (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_helpers import make_prepared, one_thread, tiny_config
from PIL import Image
from safetensors.torch import load_file

from sdm.data.manifest import read_manifest
from sdm.model import load_checkpoint, read_checkpoint_meta
from sdm.train.checkpoint import LocalCheckpointSink, list_checkpoints, read_state_json
from sdm.train.data_order import training_dataset
from sdm.train.distributed import WorkerContext
from sdm.train.events import Hook, RunLog, read_run_log
from sdm.train.worker import build_model, run_training, sample_grid_factory

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("train-data"))


def _run(config, run_dir, phases=("pretrain", "finetune"), hooks=None, resume=None, **kw):
    ctx = WorkerContext()
    return run_training(config, run_dir, ctx=ctx, phases=list(phases), hooks=hooks or Hook(),
                        sink=LocalCheckpointSink(run_dir, config.train.keep_checkpoints, ctx),
                        dataset=training_dataset(config), resume=resume, **kw)


def _weights(directory):
    return load_file(str(directory / "model.safetensors")), load_file(str(directory / "ema.safetensors"))


def test_a_few_steps_train_checkpoint_and_export(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path)
    run_dir = tmp_path / "run"
    splits = read_manifest(prepared).splits
    final = _run(cfg, run_dir, hooks=RunLog(run_dir), meta={"run_name": "run", "class_names": ["a"]},
                 data_version="dv-test", sampler_factory=sample_grid_factory(cfg, splits, None))
    start = build_model(cfg, torch.device("cpu")).state_dict()
    model, ema = _weights(final)
    assert any(not torch.equal(model[k], start[k]) for k in start)  # it trained
    assert any(not torch.equal(model[k], ema[k]) for k in start)  # EMA is its own average
    assert all(torch.isfinite(v).all() for v in model.values())
    loaded, loaded_cfg = load_checkpoint(final)  # the contract-2 layout
    assert loaded_cfg.model == cfg.model and not loaded.training
    meta = read_checkpoint_meta(final)
    assert meta["step"] == 10 and meta["data_version"] == "dv-test" and meta["run_name"] == "run"
    # Checkpoints at 3, 6 (pretrain end) and finetune 3, 4 (end): the last two kept.
    assert [p.name for _, p in list_checkpoints(run_dir)] == ["checkpoint-finetune-0000003",
                                                                "checkpoint-finetune-0000004"]
    state = read_state_json(run_dir / "checkpoint-finetune-0000004")
    assert state["step"] == 4 and state["ema_updates"] == 10 and state["extra"]["global_step"] == 10
    events = read_run_log(run_dir)
    logs = [e for e in events if e["event"] == "log"]
    assert [e["global_step"] for e in logs] == [2, 4, 6, 8, 10]
    for e in logs:
        assert e["loss"] > 0 and e["grad_norm"] > 0 and e["img_per_s"] > 0
        assert any(k.startswith("loss_q") for k in e)
    assert [e["lr"] for e in logs] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4]
    assert json.loads((final / "config.json").read_text())["train"]["batch_size"] == 4
    # EMA sample grids at each phase end: label | sample | real for the val split's 5 maps; guidance
    # only once labels were dropped in training (finetune).
    samples = [e["path"].rsplit("/", 1)[-1] for e in events if e["event"] == "sample"]
    assert samples == ["pretrain-0000006-s1.png", "finetune-0000004-s1.5.png"]
    grid = np.asarray(Image.open(run_dir / "samples" / samples[1]))
    assert grid.shape == (5 * 32 + 6 * 2, 3 * 32 + 4 * 2, 3)
    assert grid[2:34, 2 + 34:34 + 34].std() > 0  # a sample, not an empty cell


def test_ten_steps_straight_equal_five_plus_resume_plus_five(prepared, tmp_path):
    # Steps 1-5 in pretrain, a checkpoint at 5, then 6-10 across the phase boundary after resuming.
    sets = ["train.pretrain.steps=7", "train.finetune.steps=3", "train.checkpoint_every=5", "train.keep_checkpoints=5"]
    straight = _run(tiny_config(prepared, tmp_path, *sets), tmp_path / "straight")

    first_half = tiny_config(prepared, tmp_path, *sets, "train.pretrain.steps=5", "train.finetune.steps=0")
    _run(first_half, tmp_path / "resumed", phases=["pretrain"])
    resume = tmp_path / "resumed" / "checkpoint-pretrain-0000005"
    assert read_state_json(resume)["step"] == 5
    resumed = _run(tiny_config(prepared, tmp_path, *sets), tmp_path / "resumed", resume=resume)
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_finetune_alone_starts_from_init_weights_with_fresh_optimizer(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path, "train.finetune.steps=2")
    pre = _run(cfg, tmp_path / "pre", phases=["pretrain"])
    assert read_checkpoint_meta(pre)["phases"] == {"pretrain": 6}
    fine = _run(cfg, tmp_path / "fine", phases=["finetune"], init_from=pre)
    state = read_state_json(tmp_path / "fine" / "checkpoint-finetune-0000002")
    # A fresh AdamW: its step count is this phase's, not pretrain's; the EMA continued from pretrain's.
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-4
    assert state["ema_updates"] == 8  # the EMA warmup continued from pretrain's 6 updates
    both = _run(cfg, tmp_path / "both")
    for a, b in zip(_weights(fine), _weights(both), strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
