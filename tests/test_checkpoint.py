"""Checkpoint directories: round trip, EMA selection, meta, atomic replace, mismatch and missing-file errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sdm.config import Config, ConfigError, resolve
from sdm.model import (
    CheckpointError,
    SDMUNet,
    load_checkpoint,
    read_checkpoint_config,
    read_checkpoint_meta,
    save_checkpoint,
)


def small_config() -> Config:
    cfg = resolve(params=None, overrides=["model.model_channels=32", "model.spade_hidden=16",
                                          "diffusion.noise_schedule=cosine"])
    return cfg


def filled(model: SDMUNet, value_seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(value_seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_round_trip_with_ema_selection(tmp_path: Path) -> None:
    cfg = small_config()
    model = SDMUNet(cfg.model)
    state, ema = filled(model, 1), filled(model, 2)
    out = save_checkpoint(tmp_path / "ck", state, cfg, ema_state=ema, meta={"step": 7, "class_names": ["a", "b"]})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "meta.json",
                                                      "model.safetensors"]
    ema_model, cfg2 = load_checkpoint(out)
    assert cfg2 == cfg and cfg2.diffusion.noise_schedule == "cosine"
    assert not ema_model.training
    for k, v in ema_model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    raw_model, _ = load_checkpoint(out, use_ema=False)
    for k, v in raw_model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert read_checkpoint_meta(out) == {"step": 7, "class_names": ["a", "b"]}
    # Loaded weights are trainable parameters of an ordinary model.
    assert all(p.requires_grad for p in raw_model.parameters())
    x_t, t, seg = torch.randn(1, 3, 32, 32), torch.tensor([3]), torch.rand(1, 13, 32, 32)
    raw_model(x_t, t, seg).mean().backward()
    assert raw_model.out[2].weight.grad is not None


def test_without_ema_or_meta(tmp_path: Path) -> None:
    cfg = small_config()
    state = filled(SDMUNet(cfg.model), 3)
    out = save_checkpoint(tmp_path / "ck", state, cfg)
    model, _ = load_checkpoint(out, use_ema=True)  # no ema file: the model weights
    assert torch.equal(model.out[2].weight, state["out.2.weight"])
    assert read_checkpoint_meta(out) == {}
    assert read_checkpoint_config(out) == cfg


def test_save_replaces_atomically_and_refuses_wrong_state(tmp_path: Path) -> None:
    cfg = small_config()
    model = SDMUNet(cfg.model)
    target = tmp_path / "ck"
    save_checkpoint(target, filled(model, 1), cfg, meta={"step": 1})
    second = filled(model, 2)
    save_checkpoint(target, second, cfg, meta={"step": 2})
    assert read_checkpoint_meta(target) == {"step": 2}
    assert torch.equal(load_checkpoint(target)[0].out[2].weight, second["out.2.weight"])
    bad = dict(second)
    bad["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(CheckpointError, match=r"out\.2\.weight.*\[3, 32, 3, 3\].*\[6, 32, 3, 3\]"):
        save_checkpoint(target, bad, cfg, meta={"step": 3})
    assert read_checkpoint_meta(target) == {"step": 2}  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dirs left behind


def test_config_weights_mismatch_names_file_key_shapes(tmp_path: Path) -> None:
    cfg = small_config()
    out = save_checkpoint(tmp_path / "ck", filled(SDMUNet(cfg.model), 1), cfg)
    data = json.loads((out / "config.json").read_text())
    data["model"]["num_classes"] = 20
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(out)
    msg = str(e.value)
    assert str(out / "model.safetensors") in msg and str(out / "config.json") in msg
    assert "mlp_shared.0.weight" in msg and "[16, 13, 3, 3]" in msg and "[16, 21, 3, 3]" in msg
    data["model"]["num_classes"] = 12
    data["model"]["learn_sigma"] = False
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"out\.2\.weight.*\[6, 32, 3, 3\].*\[3, 32, 3, 3\]"):
        load_checkpoint(out)
    data["model"]["channel_mult"] = [1, 2, 2, 2]
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="missing .* key"):
        load_checkpoint(out)


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    cfg = small_config()
    out = save_checkpoint(tmp_path / "ck", filled(SDMUNet(cfg.model), 1), cfg)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json:1:2: not valid JSON"):
        load_checkpoint(out)
    data = dataclasses.asdict(cfg)
    data["model"]["num_clases"] = 3
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"config\.json: unknown key 'model\.num_clases'"):
        load_checkpoint(out)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    (out / "model.safetensors").write_bytes(b"garbage")
    # meta.json records the weights' sha256: the damage is named before safetensors reads the file.
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        load_checkpoint(out, use_ema=False)
    (out / "meta.json").unlink()  # a checkpoint from before checksums: safetensors' own check still names it
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors"):
        load_checkpoint(out, use_ema=False)
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: missing"):
        load_checkpoint(out)
