"""Checkpoints carry a sha256 per file: a byte flipped on disk (same size) is found, named and skipped.

The faults are real: one byte in the middle of a weights file is inverted in
place, so the size check of old still passes. Resume (``--local`` and Ray)
must pass over the corrupted newest checkpoint, say so on the console and in
train_log.jsonl, continue from the one before and end on the weights of an
uninterrupted run; a corrupted ``final/`` is an InputError naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import _train_helpers
import pytest
import torch
from _train_helpers import make_prepared, one_thread, tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from sdm.checksums import ChecksumMismatchError, sha256_file
from sdm.cli import app
from sdm.model import load_checkpoint, read_checkpoint_meta
from sdm.train.checkpoint import (
    STATE_FILE,
    TrainCheckpointError,
    local_resume_point,
    read_state_json,
    read_train_state,
)
from sdm.train.events import read_run_log
from sdm.train.launch import train

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("integrity-data"))


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory):
    """An uninterrupted ``--local`` run of the tiny config (6 pretrain + 4 finetune steps, checkpoints every 3)."""
    storage = tmp_path_factory.mktemp("straight")
    return train(tiny_config(prepared, storage), run_name="straight", local=True, log_mlflow=False,
                 echo=lambda s: None)


def flip_byte(path: Path) -> None:
    """Invert one byte in the middle of ``path``, in place: the size stays, the content does not."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    assert path.stat().st_size == size


def _weights(directory: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(directory / name)) for name in ("model.safetensors", "ema.safetensors")]


def _assert_same(a: Path, b: Path) -> None:
    for x, y in zip(_weights(a), _weights(b), strict=True):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


def test_train_state_records_sha256_and_verifies_it(straight):
    ckpt = straight.run_dir / "checkpoint-finetune-0000004"
    meta = read_state_json(ckpt)
    assert set(meta["sha256"]) == {"model.safetensors", "ema.safetensors", "optimizer.safetensors"}
    assert meta["sha256"]["model.safetensors"] == sha256_file(ckpt / "model.safetensors")
    assert set(meta["files"]) == set(meta["sha256"])  # the sizes are kept beside them (older readers)
    # The final model checkpoint records its weights' sha256 too (not shown as user meta).
    final_meta = json.loads((straight.final_dir / "meta.json").read_text())
    assert final_meta["files_sha256"]["ema.safetensors"] == sha256_file(straight.final_dir / "ema.safetensors")
    assert "files_sha256" not in read_checkpoint_meta(straight.final_dir)


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.safetensors"])
def test_a_flipped_byte_is_named_as_sha256_mismatch(straight, tmp_path, name):
    ckpt = shutil.copytree(straight.run_dir / "checkpoint-finetune-0000004", tmp_path / "checkpoint-finetune-0000004")
    flip_byte(ckpt / name)
    read_state_json(ckpt)  # sizes still agree: listing does not read the files
    with pytest.raises(TrainCheckpointError, match=rf"{name}: sha256 mismatch"):
        read_train_state(ckpt)


def test_a_changed_digit_in_train_state_json_is_caught(straight, tmp_path):
    ckpt = shutil.copytree(straight.run_dir / "checkpoint-finetune-0000004", tmp_path / "checkpoint-finetune-0000004")
    path = ckpt / STATE_FILE
    text = path.read_text()
    assert '"ema_updates": 10' in text
    path.write_text(text.replace('"ema_updates": 10', '"ema_updates": 19'))  # valid JSON, wrong content
    with pytest.raises(TrainCheckpointError, match=r"train_state\.json: sha256 mismatch"):
        read_state_json(ckpt)


def test_checkpoints_without_checksums_still_load(straight, tmp_path):
    # A checkpoint written before checksums: train_state.json has the byte sizes only.
    ckpt = shutil.copytree(straight.run_dir / "checkpoint-finetune-0000004", tmp_path / "checkpoint-finetune-0000004")
    meta = json.loads((ckpt / STATE_FILE).read_text())
    del meta["sha256"], meta["json_sha256"]
    (ckpt / STATE_FILE).write_text(json.dumps(meta, indent=1))
    state = read_train_state(ckpt)
    assert state.step == 4 and state.ema_updates == 10


def test_resume_skips_a_corrupted_newest_checkpoint_and_ends_on_the_straight_weights(prepared, straight, tmp_path):
    # Steps 1-6 (checkpoints 3 and 6), then a byte of checkpoint 6's EMA flips on disk.
    train(tiny_config(prepared, tmp_path, "train.finetune.steps=0"), run_name="r", local=True, log_mlflow=False,
          echo=lambda s: None)
    run_dir = tmp_path / "r"
    newest = run_dir / "checkpoint-pretrain-0000006"
    flip_byte(newest / "ema.safetensors")

    point = local_resume_point(run_dir)
    assert point.name == "checkpoint-pretrain-0000003" and point.state is not None and point.state.step == 3
    assert [(s.path, "ema.safetensors: sha256 mismatch" in s.reason) for s in point.skipped] == [(newest, True)]

    lines: list[str] = []
    result = train(tiny_config(prepared, tmp_path), run_name="r", local=True, log_mlflow=False, echo=lines.append)
    warning = [line for line in lines if "skipped checkpoint" in line]
    assert len(warning) == 1 and str(newest / "ema.safetensors") in warning[0] and "sha256 mismatch" in warning[0]
    assert any("pretrain: resuming at step 3/6 from checkpoint-pretrain-0000003" in line for line in lines)
    events = read_run_log(run_dir)
    skipped = [e for e in events if e["event"] == "checkpoint_skipped"]
    assert [e["path"] for e in skipped] == [str(newest)] and "sha256 mismatch" in skipped[0]["reason"]
    starts = [(e["phase"], e["start_step"], e["resumed_from"]) for e in events if e["event"] == "phase_start"]
    assert starts[-2:] == [("pretrain", 3, "checkpoint-pretrain-0000003"), ("finetune", 0, "")]
    # Steps 4-6 again, no step lost or repeated in the log of this attempt.
    last_start = max(i for i, e in enumerate(events) if e["event"] == "phase_start" and e["phase"] == "pretrain")
    assert [e["global_step"] for e in events[last_start:] if e["event"] == "log"] == [4, 6, 8, 10]
    assert read_checkpoint_meta(result.final_dir)["step"] == 10
    _assert_same(result.final_dir, straight.final_dir)  # deterministic: as if nothing had happened


def test_a_corrupted_final_checkpoint_is_an_input_error(straight, tmp_path):
    final = shutil.copytree(straight.final_dir, tmp_path / "final")
    flip_byte(final / "ema.safetensors")
    with pytest.raises(ChecksumMismatchError, match=r"ema\.safetensors: sha256 mismatch"):
        load_checkpoint(final)
    load_checkpoint(final, use_ema=False)  # the intact file still loads
    labels = tmp_path / "labels"
    labels.mkdir()
    from PIL import Image

    Image.new("L", (32, 32), 1).save(labels / "a.png")
    got = CliRunner().invoke(app, ["sample", "--checkpoint", str(final), "--labels", str(labels), "--out",
                                   str(tmp_path / "out"), "--params", "/nonexistent/params.yaml", "--no-progress",
                                   "--device", "cpu"])
    assert got.exit_code == 2, got.output
    assert f"{final / 'ema.safetensors'}: sha256 mismatch" in got.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_run_with_a_corrupted_newest_checkpoint_resumes_from_the_one_before(prepared, tmp_path, ray_cluster):
    """On Ray, ``get_checkpoint()`` hands every restart the corrupted newest checkpoint: it must be skipped."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(_train_helpers)
    keep = "train.keep_checkpoints=5"
    train(tiny_config(prepared, tmp_path, "train.finetune.steps=0", keep), run_name="ray", workers=2,
          log_mlflow=False, echo=lambda s: None)
    run_dir = tmp_path / "ray"
    newest = run_dir / "checkpoint-pretrain-0000006"
    good = load_file(str(newest / "model.safetensors"))
    flip_byte(newest / "model.safetensors")

    lines: list[str] = []
    result = train(tiny_config(prepared, tmp_path, keep), run_name="ray", workers=2, log_mlflow=False,
                   echo=lines.append)
    assert any("skipped checkpoint" in line and "model.safetensors: sha256 mismatch" in line for line in lines)
    events = read_run_log(run_dir)
    starts = [(e["phase"], e["start_step"], e["resumed_from"]) for e in events if e["event"] == "phase_start"]
    assert starts[-2:] == [("pretrain", 3, "checkpoint-pretrain-0000003"), ("finetune", 0, "")]
    # Ray still tracks the corrupted folder, so the re-made checkpoint 6 gets a folder of its own.
    saved = [Path(e["path"]).name for e in events if e["event"] == "checkpoint"]
    assert saved[-3:] == ["checkpoint-pretrain-0000006-2", "checkpoint-finetune-0000003", "checkpoint-finetune-0000004"]
    redone = load_file(str(run_dir / "checkpoint-pretrain-0000006-2" / "model.safetensors"))
    for k in good:
        # Steps 4-6 trained again: the same weights up to the order of DDP's gradient sums (as test_train_ray).
        torch.testing.assert_close(redone[k], good[k], rtol=0, atol=1e-6)
    assert read_checkpoint_meta(result.final_dir)["step"] == 10
    # A third call resumes from the newest intact checkpoint with nothing left to train.
    assert local_resume_point(run_dir).name == "checkpoint-finetune-0000004"
