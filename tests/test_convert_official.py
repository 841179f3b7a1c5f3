"""``sdm convert-official``: an official .pt becomes a checkpoint directory that load_checkpoint reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from sdm.cli import app
from sdm.model import load_checkpoint, read_checkpoint_meta

FIXTURE = Path(__file__).parent / "data" / "official_keys_small.json"
# The fixture's "small-instances-updown" model, as the official scripts' flags.
FLAGS = ["image_size=32", "num_channels=32", "num_res_blocks=2", "channel_mult=1,2,2", "attention_resolutions=16,8",
         "num_heads=2", "resblock_updown=True", "learn_sigma=True", "num_classes=6", "use_scale_shift_norm=True"]


def official_pt(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    keys = json.loads(FIXTURE.read_text())["small-instances-updown"]["keys"]
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in keys.items()}
    path = tmp_path / "ema_0.9999_000100.pt"
    torch.save(state, path)
    return path, state


def run(*args: str):
    return CliRunner().invoke(app, ["convert-official", *args])


def test_convert_with_official_flags(tmp_path: Path) -> None:
    pt, state = official_pt(tmp_path)
    flags = [a for f in FLAGS for a in ("--official-flag", f)]
    out = tmp_path / "converted"
    result = run("--checkpoint", str(pt), "--out", str(out), "--params", str(tmp_path / "none.yaml"), *flags,
                 "--set", "register.model_name=sdm-official")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    model, cfg = load_checkpoint(out)
    assert cfg.model.num_classes == 6 and cfg.model.use_instance and cfg.data.image_size == [32, 32]
    assert cfg.register.model_name == "sdm-official"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    meta = read_checkpoint_meta(out)
    assert meta["official_sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    assert meta["official_checkpoint"] == pt.name


def test_convert_mismatch_and_dry_run(tmp_path: Path) -> None:
    pt, _ = official_pt(tmp_path)
    out = tmp_path / "converted"
    result = run("--checkpoint", str(pt), "--out", str(out), "--params", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2
    assert str(pt) in result.output and "missing" in result.output and "resolved model section" in result.output
    assert not out.exists()
    result = run("--checkpoint", str(pt), "--out", str(out), "--preset", "ade20k", "--dry-run")
    assert result.exit_code == 0 and "num_classes: 151" in result.output and not out.exists()
    result = run("--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out), "--params", "none.yaml")
    assert result.exit_code == 2 and "not found" in result.output
    result = run("--checkpoint", str(pt), "--out", str(out), "--official-flag", "image_size")
    assert result.exit_code == 2 and "name=value" in result.output
