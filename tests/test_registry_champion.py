"""The champion on the challenger's terms: fetched from a real (temporary) registry, evaluated with the
challenger's data and settings, cached per (checkpoint, data content, settings, code); the side-by-side grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _eval_helpers import make_checkpoint, make_prepared, tiny_config
from _registry_helpers import write_metrics
from PIL import Image

from sdm.data.version import data_version
from sdm.eval.runner import EvalRequest, run_evaluation
from sdm.registry.champion import checkpoint_fingerprint, evaluate_champion, evaluation_key
from sdm.registry.comparison import comparison_grid
from sdm.registry.register import register_checkpoint

pytestmark = pytest.mark.slow

NAME = "sdm-champion-test"
SETTINGS = ["evaluate.guidance_scales=[1.5]", "sample.guidance_scale=1.5", f"register.model_name={NAME}"]


def test_champion_evaluated_on_the_challengers_terms_once_per_data_version(
        mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = make_prepared(tmp_path / "data")
    version = data_version(prepared)
    cfg = tiny_config(*SETTINGS)
    champion_ckpt = make_checkpoint(tmp_path / "champion", cfg, seed=1)
    register_checkpoint(champion_ckpt, write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.5}), cfg)
    challenger_ckpt = make_checkpoint(tmp_path / "challenger", cfg, seed=2)
    challenger_eval = tmp_path / "challenger-eval"
    run_evaluation(EvalRequest(checkpoint=challenger_ckpt, data=prepared, out=challenger_eval, log_mlflow=False),
                   cfg, log=print)

    first = evaluate_champion(cfg, prepared, version)
    assert first is not None and first.version == "1" and not first.cached and first.data_version == version
    # The registry's copy of the champion is what was evaluated.
    assert checkpoint_fingerprint(first.checkpoint) == checkpoint_fingerprint(champion_ckpt)
    theirs = json.loads((Path(first.eval_dir) / "evaluation.json").read_text())
    mine = json.loads((challenger_eval / "evaluation.json").read_text())
    # Same data version, label maps, seeds, sampler settings and evaluator (segmenter, feature space).
    for key in ("data_version", "split", "num_images", "repeats", "guidance_scales", "sampler", "steps",
                "segmenter", "fsd_feature_space"):
        assert theirs[key] == mine[key], key
    # The same Inception network (weights file and its source) for FID / KID.
    for key in ("weights", "source"):
        assert theirs["inception"][key] == mine["inception"][key], key
    assert theirs["data_version"] == version and theirs["segmenter"].startswith("evalsegnet:")
    # Not logged into the champion's training run: its own evaluation stays as it was.
    assert theirs["mlflow"]["logged"] is False
    figures = first.figures()
    assert figures.basis == "equal terms" and np.isfinite(figures.values["fsd@1.5"])

    # Second call on the same data: the cached evaluation, nothing run.
    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the champion was evaluated again on the same data and settings")

    monkeypatch.setattr("sdm.eval.runner.run_evaluation", no_evaluation)
    second = evaluate_champion(cfg, prepared, version)
    assert second is not None and second.cached and second.eval_dir == first.eval_dir

    # The key: the data's content, not its git commit; any evaluation setting.
    content, _, commit = version.partition("@")
    assert evaluation_key(champion_ckpt, f"{content}@othercommit", cfg) == first.key
    assert evaluation_key(champion_ckpt, "dvc:0123456789ab@" + commit, cfg) != first.key
    assert evaluation_key(champion_ckpt, version, tiny_config(*SETTINGS, "evaluate.seed=1")) != first.key
    assert evaluation_key(challenger_ckpt, version, cfg) != first.key
    # How the evaluation runs (workers, the SPADE cache bound) changes no image: the cached one is reused.
    assert evaluation_key(champion_ckpt, version, tiny_config(*SETTINGS, "evaluate.workers=2",
                                                               "sample.cache_budget_gb=0.5")) == first.key

    # Side by side: one row per label map (label | real | champion | challenger), 4 val maps at 3x.
    grid = comparison_grid(cfg, prepared, challenger_eval, first.eval_dir, tmp_path / "grid.png")
    with Image.open(grid) as img:
        assert img.size == (4 * 96 + 5 * 2, 4 * 96 + 5 * 2)
        pixels = np.asarray(img.convert("RGB"))
    cell = lambda row, col: pixels[2 + row * 98: 2 + row * 98 + 96, 2 + col * 98: 2 + col * 98 + 96]  # noqa: E731
    # The champion's and the challenger's cells are their own samples: different models, different images.
    assert not np.array_equal(cell(0, 2), cell(0, 3))
    sample = np.asarray(Image.open(challenger_eval / "samples" / "guidance_1.5" / sorted(
        p.name for p in (challenger_eval / "samples" / "guidance_1.5").glob("*_r0.png"))[0]).convert("RGB"))
    assert any(np.array_equal(cell(r, 3)[::3, ::3], sample) for r in range(4))


def test_no_champion_means_nothing_to_evaluate(mlflow_uri: str, tmp_path: Path) -> None:
    assert evaluate_champion(tiny_config(*SETTINGS), tmp_path, "dvc:abc@def") is None
