"""``sdm sample --model models:/NAME@ALIAS`` behaves like ``--checkpoint`` on the registered version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _registry_helpers import make_checkpoint, tiny_config, write_metrics
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.registry.register import register_checkpoint

NAME = "sdm-sample-test"


def _sample(*args: str | Path):
    return CliRunner().invoke(app, ["sample", *map(str, args), "--params", "/nonexistent/params.yaml",
                                    "--no-progress", "--device", "cpu", "--steps", "2", "--seed", "3"])


def _labels(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 5, (8, 8)).astype(np.uint8), mode="L").save(folder / f"map_{i}.png")
    return folder


@pytest.mark.slow
def test_sample_from_the_registry_equals_sample_from_the_checkpoint(mlflow_uri: str, tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "final")
    register_checkpoint(checkpoint, write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4}), tiny_config(), name=NAME)
    labels = _labels(tmp_path / "labels")

    res = _sample("--model", f"models:/{NAME}@champion", "--labels", labels, "--out", tmp_path / "from-model")
    assert res.exit_code == 0, res.output
    assert f"{NAME} version 1" in res.output and "wrote 2 samples" in res.output
    res = _sample("--checkpoint", checkpoint, "--labels", labels, "--out", tmp_path / "from-checkpoint")
    assert res.exit_code == 0, res.output
    for name in ("map_0.png", "map_1.png", "grid.png"):
        a = np.asarray(Image.open(tmp_path / "from-model" / name))
        b = np.asarray(Image.open(tmp_path / "from-checkpoint" / name))
        np.testing.assert_array_equal(a, b)
    assert np.asarray(Image.open(tmp_path / "from-model" / "map_0.png")).shape == (8, 8, 3)
    # Version numbers work too.
    res = _sample("--model", f"models:/{NAME}/1", "--labels", labels, "--out", tmp_path / "v1")
    assert res.exit_code == 0, res.output


def test_sample_model_errors(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    labels = _labels(tmp_path / "labels")
    res = _sample("--model", "models:/nobody@champion", "--labels", labels, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no registered model 'nobody'" in res.output
    mlflow.MlflowClient(mlflow_uri).create_registered_model(NAME)
    res = _sample("--model", f"models:/{NAME}@best", "--labels", labels, "--out", tmp_path / "o")
    assert res.exit_code == 2 and f"model '{NAME}' has no alias 'best'" in res.output
    res = _sample("--model", "sdm-toy@champion", "--labels", labels, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "expected models:/NAME@ALIAS" in res.output
    res = _sample("--labels", labels, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "exactly one of --checkpoint DIR or --model" in res.output
    res = _sample("--model", f"models:/{NAME}@best", "--checkpoint", tmp_path, "--labels", labels, "--out",
                  tmp_path / "o")
    assert res.exit_code == 2 and "exactly one of" in res.output
    assert not (tmp_path / "o").exists()
