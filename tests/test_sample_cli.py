"""``sdm sample`` end to end on a tiny checkpoint, and its errors for bad label files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.config import resolve
from sdm.model import SDMUNet, save_checkpoint

SIZE = 16
CLASSES = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = resolve(preset="toy", params=None, overrides=[
        f"model.image_size=[{SIZE},{SIZE}]", f"data.image_size=[{SIZE},{SIZE}]", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[8]", f"model.num_classes={CLASSES}", "model.spade_hidden=16",
    ])
    torch.manual_seed(0)
    model = SDMUNet(cfg.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised output convs get weights too
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    palette = [[10 * i, 20 * i, 30 * i] for i in range(CLASSES)]
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "final", model.state_dict(), cfg,
                           meta={"palette": palette, "step": 1})


def _label(seed: int, size: int = SIZE, top: int = CLASSES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, top, (size // 4, size // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)


def _write_labels(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_label(i), mode="L").save(folder / f"scene_{i}.png")
    return folder


def _run(*args: str | Path):
    return CliRunner().invoke(app, ["sample", *map(str, args), "--params", "/nonexistent/params.yaml",
                                    "--no-progress", "--device", "cpu"])


def test_sample_end_to_end(checkpoint: Path, tmp_path: Path) -> None:
    labels = _write_labels(tmp_path / "labels")
    out = tmp_path / "out"
    result = _run("--checkpoint", checkpoint, "--labels", labels, "--out", out, "--sampler", "ddim", "--steps", "3",
                  "--guidance", "2.0", "--seed", "4", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".sdm-output.json", "config.yaml", "grid.png", "scene_0.png",
                                                     "scene_1.png", "scene_2.png"]
    sample = np.asarray(Image.open(out / "scene_1.png"))
    assert sample.shape == (SIZE, SIZE, 3) and sample.dtype == np.uint8 and sample.std() > 0
    grid = np.asarray(Image.open(out / "grid.png"))
    gap = 2
    assert grid.shape == (3 * SIZE + 4 * gap, 2 * SIZE + 3 * gap, 3)
    # Row 2: the label coloured with the checkpoint's palette, then the sample.
    y = gap + 1 * (SIZE + gap)
    palette = np.array([[10 * i, 20 * i, 30 * i] for i in range(CLASSES)], dtype=np.uint8)
    assert np.array_equal(grid[y : y + SIZE, gap : gap + SIZE], palette[_label(1)])
    assert np.array_equal(grid[y : y + SIZE, 2 * gap + SIZE : 2 * gap + 2 * SIZE], sample)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["sample"] == {"sampler": "ddim", "steps": 3, "guidance_scale": 2.0, "eta": 0.0, "seed": 4,
                             "batch_size": 2, "precision": "auto", "compile": "auto", "channels_last": "auto",
                             "cache_budget_gb": 8.0}
    assert cfg["model"]["num_classes"] == CLASSES and cfg["model"]["image_size"] == [SIZE, SIZE]
    assert "wrote 3 samples" in result.output

    # The same seed gives the same images, whatever the batch size; a single file works too.
    again = tmp_path / "again"
    result = _run("--checkpoint", checkpoint, "--labels", labels / "scene_1.png", "--out", again, "--sampler",
                  "ddim", "--steps", "3", "--guidance", "2.0", "--seed", "5", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    alone = np.asarray(Image.open(again / "scene_1.png"))
    # seed 5 for the first (only) map equals seed 4 + index 1 of the batch run.
    assert np.abs(alone.astype(int) - sample.astype(int)).max() <= 1


def _write_instances(folder: Path, maps: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ids in enumerate(maps):
        Image.fromarray(ids.astype(np.uint16)).save(folder / f"scene_{i}.png")
    return folder


def _images(out: Path, n: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(out / f"scene_{i}.png")).astype(int) for i in range(n)]


def test_instances_reach_the_model_and_defaults_from_config(checkpoint: Path, tmp_path: Path) -> None:
    labels = _write_labels(tmp_path / "labels", n=2)
    square = np.zeros((SIZE, SIZE), np.uint16)
    square[4:12, 4:12] = 3
    # Instance edges unlike the label maps' own, and instance maps whose edges are exactly the default ones.
    own = _write_instances(tmp_path / "inst", [square, square])
    as_labels = _write_instances(tmp_path / "inst_labels", [_label(0), _label(1)])

    def run(out: Path, *extra: str | Path) -> list[np.ndarray]:
        result = _run("--checkpoint", checkpoint, "--labels", labels, "--out", out, "--seed", "3",
                      "--set", "sample.steps=2", "--set", "sample.sampler=dpmpp", *extra)
        assert result.exit_code == 0, result.output
        return _images(out, 2)

    with_square = run(tmp_path / "out", "--instances", own)
    default = run(tmp_path / "default")
    with_labels = run(tmp_path / "labels_as_inst", "--instances", as_labels)
    # The model uses instance edges (the toy preset), so other edges give other images from the same noise;
    # had --instances been ignored, every run would equal the default one.
    for got, ref in zip(with_square, default, strict=True):
        assert np.abs(got - ref).max() > 8
    # Instance maps equal to the labels give the default edges: the same images, bit for bit.
    for got, ref in zip(with_labels, default, strict=True):
        assert np.array_equal(got, ref)

    cfg = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert cfg["model"]["use_instance"] is True
    assert cfg["sample"]["steps"] == 2 and cfg["sample"]["sampler"] == "dpmpp"
    assert cfg["sample"]["guidance_scale"] == 1.5  # the built-in default


def test_dry_run_prints_the_config_and_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    result = _run("--checkpoint", checkpoint, "--labels", tmp_path, "--out", tmp_path / "out", "--steps", "7",
                  "--dry-run")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["sample"]["steps"] == 7
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["too_many_classes", "wrong_size", "rgb", "missing_instance", "steps",
                                  "sampler", "no_labels", "no_checkpoint"])
def test_bad_input_is_a_clear_error(checkpoint: Path, tmp_path: Path, case: str) -> None:
    labels = _write_labels(tmp_path / "labels", n=2)
    args: list[str | Path] = ["--checkpoint", checkpoint, "--labels", labels, "--out", tmp_path / "out"]
    bad = labels / "scene_1.png"
    if case == "too_many_classes":
        label = _label(1)
        label[0, 0] = 9
        Image.fromarray(label, mode="L").save(bad)
        expected = [str(bad), "label value 9", "5 classes", "0..4"]
    elif case == "wrong_size":
        Image.fromarray(_label(1, size=24), mode="L").save(bad)
        expected = [str(bad), "24x24", "expects 16x16"]
    elif case == "rgb":
        Image.fromarray(np.stack([_label(1)] * 3, -1), mode="RGB").save(bad)
        expected = [str(bad), "multi-channel PNG (mode RGB, 3 channels)", "single-channel"]
    elif case == "missing_instance":
        (tmp_path / "inst").mkdir()
        args += ["--instances", tmp_path / "inst"]
        expected = [str(tmp_path / "inst" / "scene_0.png"), "missing"]
    elif case == "steps":
        args += ["--steps", "5000"]
        expected = ["--steps 5000", "1000 steps"]
    elif case == "sampler":
        args += ["--sampler", "euler"]
        expected = ["sample.sampler", "'euler'", "ddpm, ddim, dpmpp"]
    elif case == "no_labels":
        args[3] = tmp_path / "nowhere"
        expected = [str(tmp_path / "nowhere"), "no such label file"]
    else:
        args[1] = tmp_path / "no-ckpt"
        expected = [str(tmp_path / "no-ckpt")]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
