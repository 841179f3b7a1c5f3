"""sdm register against a real (temporary) MLflow store: versions, lineage tags, aliases, promotion, pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _registry_helpers import TINY, make_checkpoint, tiny_config, write_metrics
from typer.testing import CliRunner

from sdm.cli import app
from sdm.errors import InputError
from sdm.registry.champion import ChampionEvaluation
from sdm.registry.metrics import MetricsError
from sdm.registry.model_uri import ModelUriError, checkpoint_from_registry, parse_model_uri
from sdm.registry.register import RegisterResult, register_checkpoint
from sdm.viz import save_png

NAME = "sdm-test"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


def _register(checkpoint: Path, tmp_path: Path, fsd: float, promote: bool = True) -> RegisterResult:
    metrics = write_metrics(tmp_path / f"metrics-{fsd}.json", {"fsd@1.5": fsd, "miou@1.5": 0.25,
                                                               "skipped": {"fid@1.5": "no Inception weights"}})
    return register_checkpoint(checkpoint, metrics, tiny_config(), name=NAME, promote=promote)


@pytest.mark.slow
def test_versions_lineage_and_champion_moves_only_when_better(mlflow_uri: str, checkpoint: Path,
                                                              tmp_path: Path) -> None:
    import mlflow

    from sdm.registry.lineage import git_commit, params_hash

    first = _register(checkpoint, tmp_path, fsd=0.50)
    assert first.version == "1"
    assert first.promotion.decision == "promoted" and first.aliases == {"candidate": 1, "champion": 1}

    # Other weights (registering the same checkpoint again gives its one version: tests/test_registry_idempotent.py).
    second = make_checkpoint(tmp_path / "second" / "final", seed=2)
    worse = _register(second, tmp_path, fsd=0.70)
    assert worse.version == "2"
    assert worse.promotion.decision == "kept"
    assert worse.aliases == {"candidate": 2, "champion": 1}

    third = make_checkpoint(tmp_path / "third" / "final", seed=3)
    better = _register(third, tmp_path, fsd=0.30)
    assert better.version == "3" and better.promotion.decision == "promoted"
    assert better.aliases == {"candidate": 3, "champion": 3}

    client = mlflow.MlflowClient(mlflow_uri)
    version = client.get_model_version(NAME, "2")
    tags = version.tags
    assert tags["promotion.decision"] == "kept" and tags["promotion.metric"] == "fsd@1.5"
    assert float(tags["promotion.value"]) == 0.70 and float(tags["promotion.champion_value"]) == 0.50
    assert tags["promotion.champion_version"] == "1"
    assert float(tags["metrics.fsd_at_1.5"]) == 0.70 and float(tags["metrics.miou_at_1.5"]) == 0.25
    assert tags["lineage.params_hash"] == params_hash(json.loads((checkpoint / "config.json").read_text()))
    assert tags["lineage.git_commit"] == git_commit() and len(tags["lineage.git_commit"]) == 40
    assert tags["lineage.data_version"] == "data-v1" and tags["lineage.train_mlflow_run_id"] == "abc123"
    assert tags["lineage.checkpoint"] == str(second.resolve())
    # The description: the decision and a short table (metric | challenger | champion | change).
    assert "**Promotion: kept**" in version.description
    assert "| **fsd@1.5** (compared) | 0.7 | 0.5 | 40.0% worse |" in version.description
    # The checkpoint's training run ("abc123") is not in this store: a register-<name> run holds the model,
    # with the metrics logged on it (MLflow-safe names).
    assert not worse.in_training_run and client.get_run(worse.run_id).info.run_name == f"register-{NAME}"
    assert version.run_id == worse.run_id
    assert client.get_run(worse.run_id).data.metrics["fsd_at_1.5"] == 0.70
    # The version holds the checkpoint files, downloadable as a checkpoint directory again.
    got = checkpoint_from_registry(f"models:/{NAME}@champion", tmp_path / "dl")
    assert got.version == "3"
    assert sorted(p.name for p in got.path.iterdir()) == ["config.json", "ema.safetensors", "meta.json",
                                                          "model.safetensors"]


@pytest.mark.slow
def test_champion_loads_through_pyfunc_and_generates_uint8_images(mlflow_uri: str, checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    _register(checkpoint, tmp_path, fsd=0.4)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 5, (8, 8)) for _ in range(3)]
    images = model.predict(pd.DataFrame({"labels": labels}), params={"steps": 2, "seed": 3})
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    # Same seed and label map: the same image; another label map or an instance map changes it.
    again = model.predict(pd.DataFrame({"labels": labels[:1]}), params={"steps": 2, "seed": 3})
    np.testing.assert_array_equal(again, images[:1])
    other = model.predict(pd.DataFrame({"labels": labels[1:2]}), params={"steps": 2, "seed": 3})
    assert not np.array_equal(other, images[:1])
    # One class everywhere: no edges from the label map, but every pixel is an instance edge.
    flat = np.zeros((8, 8), np.int64)
    plain = model.predict(pd.DataFrame({"labels": [flat]}), params={"steps": 2, "seed": 3})
    with_instances = model.predict(pd.DataFrame({"labels": [flat], "instances": [np.arange(64).reshape(8, 8)]}),
                                   params={"steps": 2, "seed": 3})
    assert with_instances.shape == (1, 8, 8, 3) and not np.array_equal(with_instances, plain)
    # eta reaches DDIM through the params: eta 1 draws fresh noise each step (from the seed), eta 0 none.
    ddim = {"steps": 3, "seed": 3, "sampler": "ddim"}
    frame = pd.DataFrame({"labels": labels[:1]})
    noisy = model.predict(frame, params={**ddim, "eta": 1.0})
    np.testing.assert_array_equal(model.predict(frame, params={**ddim, "eta": 1.0}), noisy)
    assert not np.array_equal(model.predict(frame, params={**ddim, "eta": 0.0}), noisy)
    with pytest.raises(MlflowException, match=r"param eta=2.0 must be in \[0, 1\]"):
        model.predict(frame, params={**ddim, "eta": 2.0})
    with pytest.raises(MlflowException, match="label map 0 has value 9; the model has 5 classes"):
        model.predict(pd.DataFrame({"labels": [np.full((8, 8), 9)]}))
    with pytest.raises(MlflowException, match=r"map is 16x16 \(HxW\) but the model takes 8x8"):
        model.predict(pd.DataFrame({"labels": [np.zeros((16, 16), np.int64)]}))


def test_no_metrics_is_refused_before_anything_is_registered(mlflow_uri: str, checkpoint: Path,
                                                             tmp_path: Path) -> None:
    import mlflow

    with pytest.raises(MetricsError, match="no metrics file"):
        register_checkpoint(checkpoint, tmp_path / "missing.json", tiny_config(), name=NAME)
    empty = write_metrics(tmp_path / "empty.json", {})
    with pytest.raises(MetricsError, match="no metric figures"):
        register_checkpoint(checkpoint, empty, tiny_config(), name=NAME)
    only_skipped = write_metrics(tmp_path / "skipped.json", {"miou@1.5": 0.3, "skipped": {"fid": "no weights",
                                                                                         "fsd": "no segmenter"}})
    with pytest.raises(MetricsError, match="no usable primary metric"):
        register_checkpoint(checkpoint, only_skipped, tiny_config(), name=NAME)
    assert mlflow.MlflowClient(mlflow_uri).search_registered_models() == []


def test_cli_register_errors_are_clean(mlflow_uri: str, checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.3})
    res = runner.invoke(app, ["register", "--checkpoint", str(checkpoint), "--metrics", str(tmp_path / "nope.json"),
                              "--name", NAME])
    assert res.exit_code == 2 and "nope.json: no metrics file" in res.output
    res = runner.invoke(app, ["register", "--checkpoint", str(tmp_path / "no-ckpt"), "--metrics", str(metrics)])
    assert res.exit_code == 2 and "no-ckpt" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["register", "--checkpoint", str(checkpoint), "--metrics", str(metrics),
                              "--alias", "champion"])
    assert res.exit_code == 2 and "is the champion alias" in res.output


@pytest.mark.slow
def test_cli_register_prints_version_aliases_and_decision(mlflow_uri: str, checkpoint: Path, tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.3, "primary_metric": "fsd@1.5"})
    sets = [arg for s in TINY for arg in ("--set", s)]
    res = CliRunner().invoke(app, ["register", "--checkpoint", str(checkpoint), "--metrics", str(metrics),
                                   "--name", NAME, "--no-promote", "--params", str(tmp_path / "none.yaml"), *sets])
    assert res.exit_code == 0, res.output
    assert f"registered {NAME} version 1" in res.output
    assert "aliases: candidate -> v1\n" in res.output
    assert "promotion: not requested: no champion yet" in res.output


def test_model_uri_errors_name_what_exists(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    with pytest.raises(ModelUriError, match="expected models:/NAME@ALIAS"):
        parse_model_uri("runs:/abc/model")
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    with pytest.raises(ModelUriError, match=r"no registered model 'ghost' .*registered: none"):
        checkpoint_from_registry("models:/ghost@champion", tmp_path)
    mlflow.MlflowClient(mlflow_uri).create_registered_model("empty-model")
    with pytest.raises(ModelUriError, match=r"model 'empty-model' has no alias 'champion' \(aliases: none\)"):
        checkpoint_from_registry("models:/empty-model@champion", tmp_path)
    with pytest.raises(ModelUriError, match="has no version 4"):
        checkpoint_from_registry("models:/empty-model/4", tmp_path)


def _training_run(client: object, name: str) -> str:
    """A finished training run in the store, as `sdm train` leaves one."""
    exp = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run_id = client.create_run(exp.experiment_id, run_name="train").info.run_id
    client.set_terminated(run_id)
    return run_id


@pytest.mark.slow
def test_equal_terms_guard_keeps_out_and_version_lives_in_its_training_run(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    run1, run2 = _training_run(client, NAME), _training_run(client, NAME)
    ckpt1 = make_checkpoint(tmp_path / "r1" / "final", seed=1, meta={"mlflow_run_id": run1})
    ckpt2 = make_checkpoint(tmp_path / "r2" / "final", seed=2, meta={"mlflow_run_id": run2})
    cfg = tiny_config("register.promotion.metric=fsd@1.5", "register.promotion.guards={miou@1.5: 0.05}")
    first = register_checkpoint(ckpt1, write_metrics(tmp_path / "m1.json", {"fsd@1.5": 0.40, "miou@1.5": 0.30}),
                                cfg, name=NAME)
    # The version's source run is its training run: no separate register-* run.
    assert first.in_training_run and first.run_id == run1
    assert client.get_model_version(NAME, "1").run_id == run1
    assert client.get_run(run1).info.status == "FINISHED"
    assert not client.search_runs([client.get_experiment_by_name(NAME).experiment_id],
                                  filter_string=f"attributes.run_name = 'register-{NAME}'")

    # The champion re-evaluated on the challenger's data: other figures than its registration's tags.
    champ_eval = tmp_path / "champion-eval"
    champ_eval.mkdir()
    write_metrics(champ_eval / "metrics.json", {"fsd@1.5": 0.42, "miou@1.5": 0.30, "skipped": {}})
    champion = ChampionEvaluation(name=NAME, version="1", checkpoint=str(ckpt1), eval_dir=str(champ_eval),
                                  data_version="dvc:new@abc", key="k", cached=False)
    grid = save_png(np.zeros((8, 32, 3), np.uint8), tmp_path / "grid.png")
    # Better on fsd (0.32 vs 0.42) but mIoU 10% lower than the guard's 5%: kept out.
    second = register_checkpoint(ckpt2, write_metrics(tmp_path / "m2.json", {"fsd@1.5": 0.32, "miou@1.5": 0.27}),
                                 cfg, name=NAME, champion=champion.as_dict(), comparison_grid=grid,
                                 extra_tags={"lineage.retrain.action": "continue"})
    d = second.promotion
    assert d.decision == "kept" and second.aliases["champion"] == 1
    assert d.champion_value == 0.42, "compared with the champion's tags, not its evaluation on equal terms"
    assert "but guard miou@1.5 is 10.0% worse" in d.reason and "dvc:new@abc" in d.reason
    version = client.get_model_version(NAME, second.version)
    tags = version.tags
    assert version.run_id == run2 and tags["lineage.retrain.action"] == "continue"
    assert tags["promotion.basis"] == "equal terms" and tags["champion.data_version"] == "dvc:new@abc"
    assert float(tags["champion.metrics.fsd_at_1.5"]) == 0.42 and float(tags["metrics.fsd_at_1.5"]) == 0.32
    assert "| metric | challenger | champion v1 | change |" in version.description
    assert "| miou@1.5 (guard: at most 5% worse) | 0.27 | 0.3 | 10.0% worse |" in version.description
    # The grid and the table are artifacts of the version's (training) run.
    listed = {Path(a.path).name for a in client.list_artifacts(run2, "comparison")}
    assert listed == {"grid.png", "comparison.md"}
    md = Path(mlflow.artifacts.download_artifacts(run_id=run2, artifact_path="comparison/comparison.md",
                                                  dst_path=str(tmp_path / "dl"))).read_text()
    assert "kept" in md and "![side by side](grid.png)" in md


def test_bad_rule_and_bad_grid_register_nothing(mlflow_uri: str, checkpoint: Path, tmp_path: Path) -> None:
    import mlflow

    from sdm.registry.rule import PromotionRuleError

    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.3})
    with pytest.raises(PromotionRuleError, match="register.promotion.guards.miou@3.0"):
        register_checkpoint(checkpoint, metrics, tiny_config("register.promotion.guards={miou@3.0: 0.1}"), name=NAME)
    with pytest.raises(InputError, match="nope.png: no such file"):
        register_checkpoint(checkpoint, metrics, tiny_config(), name=NAME, comparison_grid=tmp_path / "nope.png")
    assert mlflow.MlflowClient(mlflow_uri).search_registered_models() == []
