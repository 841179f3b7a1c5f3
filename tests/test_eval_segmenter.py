"""The evaluation segmenter: trains on the real train split, is cached per data version, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _eval_helpers import make_prepared, tiny_config
from typer.testing import CliRunner

from sdm.cli import app
from sdm.eval.segmenter_cache import META, train_and_save


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("segdata"))


def test_trains_caches_and_reuses(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config("evaluate.segmenter.steps=20")
    logs: list[str] = []
    seg, directory, trained = train_and_save(prepared, cfg, log=logs.append)
    assert trained and directory.is_relative_to(tmp_path / "cache")
    info = json.loads((directory / META).read_text())
    assert info["steps"] == 20 and info["train_images"] == 12 and info["val_images"] == 4
    assert info["final_loss"] < info["initial_loss"]  # it learns
    assert 0.0 <= info["val_miou"] <= 1.0 and len(info["val_per_class_iou"]) == 12
    assert info["data_version"].startswith(("manifest:", "dvc:"))

    again, directory2, trained2 = train_and_save(prepared, cfg, log=logs.append)
    assert (directory2, trained2) == (directory, False) and any("reusing" in m for m in logs)
    assert again.info == seg.info
    # Other settings: another cache entry; --force: retrained in place.
    _, directory3, trained3 = train_and_save(prepared, tiny_config("evaluate.segmenter.steps=3"), log=logs.append)
    assert trained3 and directory3 != directory
    _, directory4, trained4 = train_and_save(prepared, cfg, force=True, log=logs.append)
    assert trained4 and directory4 == directory


def test_train_segmenter_cli(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "seg"
    args = ["evaluate", "train-segmenter", "--data", str(prepared), "--out", str(out), "--params", "none.yaml",
            "--set", "evaluate.segmenter.steps=5", "--set", "evaluate.segmenter.width=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["segmenter"] == str(out) and summary["trained_now"] and summary["val_images"] == 4
    assert (out / "segmenter.safetensors").is_file()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and json.loads(result.stdout)["trained_now"] is False

    missing = CliRunner().invoke(app, ["evaluate", "train-segmenter", "--data", str(tmp_path / "nope"),
                                       "--params", "none.yaml"])
    assert missing.exit_code == 2 and "sdm data prepare" in missing.output
