"""Bad input to ``sdm train``: each a clear error before any worker (or Ray) starts."""

from __future__ import annotations

import pytest
from _train_helpers import FAULT_MARKER, ExitAtStep, make_prepared, tiny_config
from typer.testing import CliRunner

from sdm.config import ConfigError, to_dict
from sdm.data.manifest import ManifestError
from sdm.train.checkpoint import TrainState, write_train_state
from sdm.train.launch import train
from sdm.train.preflight import PreflightError, model_shape_diff


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("train-inputs"))


@pytest.fixture(autouse=True)
def no_ray_started():
    import ray

    was = ray.is_initialized()
    yield
    assert ray.is_initialized() == was, "a bad input must be reported before Ray starts"


def _train(cfg, **kw):
    return train(cfg, run_name=kw.pop("run_name", "r"), log_mlflow=False, echo=lambda s: None, **kw)


def test_dataset_classes_differ_from_the_model(prepared, tmp_path):
    with pytest.raises(PreflightError, match=r"dataset has 12 classes but model.num_classes is 5.*num_classes=12"):
        _train(tiny_config(prepared, tmp_path, "model.num_classes=5"))


def test_missing_prepared_data_names_the_command(tmp_path):
    with pytest.raises(ManifestError, match=r"does not exist.*sdm data prepare.*dvc pull"):
        _train(tiny_config(tmp_path / "nothing-here", tmp_path))


def test_global_batch_not_divisible_by_workers(prepared, tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size 5 is not divisible by 2 workers"):
        _train(tiny_config(prepared, tmp_path, "train.batch_size=5"), workers=2)


def test_a_students_network_is_refused_outside_a_distillation_stage(prepared, tmp_path):
    with pytest.raises(ConfigError, match=r"model.guidance_embed is true .* distill.stage is empty.*sdm distill"):
        _train(tiny_config(prepared, tmp_path, "model.guidance_embed=true"), workers=2)
    assert not (tmp_path / "r").exists()


def test_batch_larger_than_the_train_split(prepared, tmp_path):
    with pytest.raises(PreflightError, match="fewer than the global batch"):
        _train(tiny_config(prepared, tmp_path, "train.batch_size=64"))


def test_resume_with_a_different_model_shape(prepared, tmp_path):
    old = tiny_config(prepared, tmp_path, "model.model_channels=64", "model.num_res_blocks=2")
    write_train_state(tmp_path / "r" / "checkpoint-pretrain-0000003",
                      TrainState(phase="pretrain", phase_index=0, step=3, phase_steps=6, model={}, ema={},
                                 ema_updates=3, optimizer=None, config=to_dict(old)))
    with pytest.raises(PreflightError, match=r"different model \(model.model_channels: checkpoint 64, now 32; "
                                             r"model.num_res_blocks: checkpoint 2, now 1\).*--run-name"):
        _train(tiny_config(prepared, tmp_path))
    # Settings that change no weight shape do not block a resume.
    runtime = tiny_config(prepared, tmp_path, "model.use_checkpoint=true", "model.dropout=0.1")
    assert model_shape_diff(runtime.model, tiny_config(prepared, tmp_path).model) == {}


def test_init_from_a_different_model(prepared, tmp_path):
    import torch

    from sdm.model import save_checkpoint
    from sdm.train.worker import build_model

    other = tiny_config(prepared, tmp_path, "model.num_classes=7")
    save_checkpoint(tmp_path / "other", build_model(other, torch.device("cpu")).state_dict(), other)
    with pytest.raises(PreflightError, match=r"--init-from weights are of a different model.*num_classes"):
        _train(tiny_config(prepared, tmp_path), phase="finetune", init_from=tmp_path / "other")


def test_fault_injection_needs_a_rank_one(prepared, tmp_path):
    with pytest.raises(ConfigError, match="step 2 kills rank 1"):
        _train(tiny_config(prepared, tmp_path), workers=1, worker_hooks=[ExitAtStep(2, tmp_path / FAULT_MARKER)])


def test_run_name_must_be_a_folder_name(prepared, tmp_path):
    with pytest.raises(ConfigError, match="plain folder name"):
        _train(tiny_config(prepared, tmp_path), run_name="../elsewhere")


def test_cli_prints_one_message_and_exits_2(prepared, tmp_path):
    from sdm.cli import app

    result = CliRunner().invoke(app, ["train", "--params", str(tmp_path / "none.yaml"),
                                      "--set", f"data.prepared={prepared}", "--set", f"train.storage_path={tmp_path}",
                                      "--set", "model.num_classes=3", "--no-mlflow"])
    assert result.exit_code == 2
    assert "error:" in result.output and "model.num_classes is 3" in result.output
    assert "Traceback" not in result.output


def test_resume_notes_a_data_change_but_not_a_code_commit(prepared, tmp_path):
    from sdm.data.version import data_version
    from sdm.train.preflight import preflight

    cfg = tiny_config(prepared, tmp_path)
    now = data_version(prepared)
    data_part, _, commit = now.partition("@")

    def notes_for(saved_version: str) -> list[str]:
        write_train_state(tmp_path / "r" / "checkpoint-pretrain-0000003",
                          TrainState(phase="pretrain", phase_index=0, step=3, phase_steps=6, model={}, ema={},
                                     ema_updates=3, optimizer=None, config=to_dict(cfg),
                                     data_version=saved_version))
        return preflight(cfg, tmp_path / "r", workers=1, phases=["pretrain"]).notes

    assert notes_for(f"{data_part}@{'0' * 12}") == []  # same data, another code commit
    changed = notes_for(f"dvc:ffffffffffff@{commit}")
    assert len(changed) == 1 and "the data changed" in changed[0] and now in changed[0]
