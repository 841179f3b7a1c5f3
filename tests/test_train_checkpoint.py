"""Training checkpoints: safetensors + JSON round trip (optimizer included), completeness, last-K retention."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sdm.config import resolve, to_dict
from sdm.train.checkpoint import (
    CheckpointStore,
    TrainCheckpointError,
    TrainState,
    latest_checkpoint,
    read_train_state,
    write_train_state,
)


def _state(step: int, phase: str = "pretrain", index: int = 0) -> TrainState:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return TrainState(phase=phase, phase_index=index, step=step, phase_steps=10, model=model.state_dict(),
                      ema={k: v * 0.5 for k, v in model.state_dict().items()}, ema_updates=step,
                      optimizer=opt.state_dict(), config=to_dict(resolve(params=None)), data_version="dv1")


def test_round_trip_restores_every_tensor_and_the_optimizer(tmp_path):
    state = _state(3)
    path = write_train_state(tmp_path / "checkpoint-pretrain-0000003", state)
    back = read_train_state(path)
    assert (back.phase, back.step, back.ema_updates, back.data_version) == ("pretrain", 3, 3, "dv1")
    for k in state.model:
        assert torch.equal(back.model[k], state.model[k]) and torch.equal(back.ema[k], state.ema[k])
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.load_state_dict(back.optimizer)
    restored = opt.state_dict()
    for i, per_param in state.optimizer["state"].items():
        for name, value in per_param.items():
            assert torch.equal(restored["state"][i][name], value)
    assert restored["param_groups"][0]["lr"] == state.optimizer["param_groups"][0]["lr"]
    assert not list(tmp_path.glob(".*tmp*"))  # the temp dir was renamed into place
    meta = json.loads((path / "train_state.json").read_text())
    assert "no generator state" in meta["rng"] and meta["config"]["model"]["num_classes"] == 12


def test_truncated_checkpoint_is_refused_and_skipped(tmp_path):
    good = write_train_state(tmp_path / "checkpoint-pretrain-0000002", _state(2))
    bad = write_train_state(tmp_path / "checkpoint-pretrain-0000004", _state(4))
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(TrainCheckpointError, match="incomplete checkpoint"):
        read_train_state(bad)
    assert latest_checkpoint(tmp_path) == good


def test_store_keeps_the_newest_k_across_phases(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (2, 4, 6):
        store.save(_state(step))
    store.save(_state(2, phase="finetune", index=1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-finetune-0000002", "checkpoint-pretrain-0000006"]
    assert store.latest().name == "checkpoint-finetune-0000002"
