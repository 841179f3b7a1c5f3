"""``sdm distill``'s run machinery (sdm.distill.run): stages as training runs, exact resume after SIGKILL,
registration of the student with lineage to its teacher, and inputs refused before anything is written.

A tiny teacher (random weights, the training tests' small U-Net at 32x32, T=100) on the synthetic scenes;
distill.steps=2 from start_steps=4: stage one (guidance, 3 steps) then one halving round (halve-4, 4 steps).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _process_helpers import REPO, kill9, start_child, wait_for
from _train_helpers import make_prepared, tiny_config
from PIL import Image
from typer.testing import CliRunner

from sdm.config import ConfigError
from sdm.distill.run import DistillError, distill, halving_rounds, plan_stages
from sdm.errors import InputError

DISTILL = ["distill.steps=2", "distill.start_steps=4", "distill.guidance_train_steps=3",
           "distill.halving_train_steps=4", "distill.model_name=tiny-distilled", "train.workers=1",
           "train.checkpoint_every=2", "evaluate.segmenter.steps=20", "evaluate.repeats=1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared data and a teacher checkpoint (random weights; its zero-initialised output layers perturbed
    so that its guided output depends on the label map)."""
    from sdm.model import SDMUNet, save_checkpoint

    root = tmp_path_factory.mktemp("distill")
    prepared = make_prepared(root / "data", n=16)
    cfg = tiny_config(prepared, root / "runs")
    torch.manual_seed(0)
    model = SDMUNet(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    teacher = save_checkpoint(root / "teacher", model.state_dict(), cfg, ema_state=model.state_dict(),
                              meta={"run_name": "teacher", "data_version": "v1"})
    return {"root": root, "prepared": prepared, "storage": root / "runs", "teacher": teacher}


def _config(project: dict[str, Path], *extra: str):
    return tiny_config(project["prepared"], project["storage"], *DISTILL, *extra)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def straight(project: dict[str, Path]):
    """One distillation run straight through, in this process."""
    torch.set_num_threads(1)
    return distill(_config(project), teacher=str(project["teacher"]), run_name="straight", local=True,
                   log_mlflow=False, echo=lambda s: None)


def test_plan_halves_from_start_steps_down_to_steps() -> None:
    from sdm.config.schema import DistillConfig

    assert halving_rounds(DistillConfig(steps=8, start_steps=64), 1000) == [64, 32, 16]
    assert halving_rounds(DistillConfig(steps=4, start_steps=4), 1000) == []
    stages = plan_stages(DistillConfig(steps=2, start_steps=8, guidance_train_steps=5, halving_train_steps=3), 100)
    assert [(s.name, s.teacher_steps, s.train_steps) for s in stages] == [
        ("guidance", 0, 5), ("halve-8", 8, 3), ("halve-4", 4, 3)]
    for start in (12, 6, 1):
        with pytest.raises(ConfigError, match=rf"distill.start_steps={start} must be distill.steps=4"):
            halving_rounds(DistillConfig(steps=4, start_steps=start), 1000)
    with pytest.raises(ConfigError, match="diffusion.steps=100"):
        halving_rounds(DistillConfig(steps=8, start_steps=128), 100)


def test_straight_run_writes_each_stage_and_a_student_with_its_lineage(straight, project) -> None:
    from sdm.model import load_checkpoint, read_checkpoint_meta

    run = straight.run_dir
    assert [s["name"] for s in straight.stages] == ["guidance", "halve-4"]
    # Each stage's student names its own sampling steps: stage one the grid stage two starts from (4), the
    # halving round half its teacher's (2).
    for stage, steps, own in (("guidance", 3, 4), ("halve-4", 4, 2)):
        stage_cfg = json.loads((run / stage / "final" / "config.json").read_text())
        assert stage_cfg["train"]["phases"] == ["finetune"] and stage_cfg["train"]["finetune"]["steps"] == steps
        assert stage_cfg["train"]["finetune"]["drop_rate"] == 0.0
        assert stage_cfg["sample"]["sampler"] == stage_cfg["evaluate"]["sampler"] == "renoise"
        assert stage_cfg["sample"]["steps"] == stage_cfg["evaluate"]["steps"] == own
    halve = json.loads((run / "halve-4" / "final" / "config.json").read_text())["distill"]
    # Each halving round's teacher is the previous stage's student.
    assert halve["stage"] == "halve" and halve["teacher_steps"] == 4
    assert halve["teacher"] == str(run / "guidance" / "final")
    model, cfg = load_checkpoint(straight.final_dir)
    assert model.guidance_embedded and cfg.sample.sampler == "renoise" and cfg.sample.steps == 2
    assert cfg.distill.stage == "" and cfg.distill.teacher == ""
    meta = read_checkpoint_meta(straight.final_dir)["distill"]
    assert meta["teacher_uri"] == str(project["teacher"].resolve()) and meta["teacher_version"] == "none"
    assert meta["teacher_checkpoint_sha256"] == _sha(project["teacher"] / "ema.safetensors")
    assert [s["name"] for s in meta["stages"]] == ["guidance", "halve-4"] and meta["wall_time_s"] > 0
    # The final weights are the last stage's; distillation moved them away from the student's start.
    assert _sha(straight.final_dir / "ema.safetensors") != _sha(run / "student-init" / "ema.safetensors")
    from safetensors.torch import load_file

    a = load_file(str(straight.final_dir / "ema.safetensors"))
    b = load_file(str(run / "halve-4" / "final" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_of_a_finished_distillation_trains_nothing(straight, project) -> None:
    before = _sha(straight.final_dir / "ema.safetensors")
    lines: list[str] = []
    again = distill(_config(project), teacher=str(project["teacher"]), run_name="straight", local=True,
                    log_mlflow=False, echo=lines.append)
    assert _sha(again.final_dir / "ema.safetensors") == before
    assert any("guidance: done" in x for x in lines) and any("halve-4: done" in x for x in lines)
    # Other settings on the same run folder are refused (they would mix two distillations).
    with pytest.raises(DistillError, match=r"distill.halving_train_steps: was 4, now 5.*new --run-name"):
        distill(_config(project, "distill.halving_train_steps=5"), teacher=str(project["teacher"]),
                run_name="straight", local=True, log_mlflow=False, echo=lambda s: None)


def test_cli_rerun_of_the_straight_run_reports_the_student(straight, project) -> None:
    from _train_helpers import TINY

    from sdm.cli import app

    sets = [x for o in (*TINY, *DISTILL, f"data.prepared={project['prepared']}",
                        f"train.storage_path={project['storage']}") for x in ("--set", o)]
    res = CliRunner().invoke(app, ["distill", "--teacher", str(project["teacher"]), "--run-name", "straight",
                                   "--local", "--no-mlflow", "--params", "/nonexistent.yaml", *sets])
    assert res.exit_code == 0, res.output
    assert f"student: {straight.final_dir} (teacher {project['teacher'].resolve()}; distillation wall time" \
        in res.output


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from _train_helpers import tiny_config
from sdm.distill.run import distill
from sdm.train.events import Hook, Launching, StepStart

class PauseMidStage(Hook):
    # Stops the run inside halve-4 after its checkpoint at step 2: the parent SIGKILLs it there.
    stage = ""
    def handle(self, event):
        if isinstance(event, Launching):
            PauseMidStage.stage = Path(event.run_dir).name
        elif isinstance(event, StepStart) and self.stage == "halve-4" and event.step == 3:
            print("PAUSED", flush=True)
            time.sleep(600)

cfg = tiny_config(Path({prepared!r}), Path({storage!r}), *{overrides!r})
distill(cfg, teacher={teacher!r}, run_name="killed", local=True, log_mlflow=False,
        worker_hooks=[PauseMidStage()])
"""


@pytest.mark.slow
def test_a_distillation_killed_mid_stage_resumes_to_the_same_weights(straight, project) -> None:
    script = _CHILD.format(tests=str(REPO / "tests"), prepared=str(project["prepared"]),
                           storage=str(project["storage"]), overrides=DISTILL, teacher=str(project["teacher"]))
    proc = start_child(script)
    wait_for(proc, "PAUSED", timeout=240)
    kill9(proc)
    run = project["storage"] / "killed"
    assert (run / "guidance" / "final" / "ema.safetensors").is_file()
    assert not (run / "halve-4" / "final").exists() and not (run / "final").exists()
    assert list((run / "halve-4").glob("checkpoint-finetune-*"))
    lines: list[str] = []
    resumed = distill(_config(project), teacher=str(project["teacher"]), run_name="killed", local=True,
                      log_mlflow=False, echo=lines.append)
    assert any("guidance: done" in x for x in lines)
    assert any("resuming from checkpoint-finetune-0000002" in x for x in lines)
    for rel in ("guidance/final/ema.safetensors", "halve-4/final/ema.safetensors", "final/ema.safetensors"):
        assert _sha(run / rel) == _sha(straight.run_dir / rel), rel
    assert resumed.stages[0]["wall_s"] is not None


@pytest.mark.slow
def test_student_registers_loads_through_models_uri_and_samples_with_its_sampler(
        straight, project, mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    from sdm.cli import app
    from sdm.distill.register import register_student

    result = register_student(straight.final_dir, _config(project), name="tiny-distilled", log_mlflow=True,
                              log=lambda s: None)
    version = mlflow.MlflowClient().get_model_version("tiny-distilled", result.version)
    assert version.tags["lineage.teacher_uri"] == str(project["teacher"].resolve())
    assert version.tags["lineage.teacher_version"] == "none"
    assert version.tags["lineage.teacher_checkpoint_sha256"] == _sha(project["teacher"] / "ema.safetensors")
    evaluation = json.loads((straight.run_dir / "evaluation" / "evaluation.json").read_text())
    assert evaluation["sampler"] == "renoise" and evaluation["steps"] == 2

    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 12, (32, 32)).astype(np.uint8), mode="L").save(labels / "map_0.png")
    res = CliRunner().invoke(app, ["sample", "--model", f"models:/tiny-distilled/{result.version}", "--labels",
                                   str(labels), "--out", str(tmp_path / "out"), "--params", "/nonexistent.yaml",
                                   "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    # No --sampler / --steps: the student's own (its config.json), one network pass per step.
    assert "(renoise, 2 steps" in res.output, res.output
    assert np.asarray(Image.open(tmp_path / "out" / "map_0.png")).shape == (32, 32, 3)


def test_bad_inputs_are_named_and_nothing_is_written(project, mlflow_uri: str, tmp_path: Path) -> None:
    storage = project["storage"]
    cfg = _config(project)
    with pytest.raises(InputError, match=r"--teacher models:/nobody@champion: no registered model 'nobody'"):
        distill(cfg, teacher="models:/nobody@champion", run_name="bad-uri", local=True, log_mlflow=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a checkpoint")
    with pytest.raises(DistillError, match=r"--teacher .*notes: not an sdm checkpoint directory"):
        distill(cfg, teacher=str(tmp_path / "notes"), run_name="bad-dir", local=True, log_mlflow=False)
    with pytest.raises(DistillError, match=r"--teacher .*nowhere: not an sdm checkpoint directory \(no such"):
        distill(cfg, teacher=str(tmp_path / "nowhere"), run_name="bad-dir", local=True, log_mlflow=False)
    with pytest.raises(ConfigError, match=r"distill.start_steps=6 must be distill.steps=2 times a power of two"):
        distill(_config(project, "distill.start_steps=6"), teacher=str(project["teacher"]), run_name="bad-steps",
                local=True, log_mlflow=False)
    for name in ("bad-uri", "bad-dir", "bad-steps"):
        assert not (storage / name).exists(), name


def test_cli_names_a_bad_teacher_with_exit_code_2(project, tmp_path: Path) -> None:
    from sdm.cli import app

    res = CliRunner().invoke(app, ["distill", "--teacher", str(tmp_path / "nowhere"), "--steps", "2",
                                   "--params", "/nonexistent.yaml", "--set", "distill.start_steps=4",
                                   "--set", f"train.storage_path={tmp_path / 'runs'}", "--local", "--no-mlflow"])
    assert res.exit_code == 2 and "not an sdm checkpoint directory" in res.output, res.output
    res = CliRunner().invoke(app, ["distill", "--teacher", str(project["teacher"]), "--steps", "4",
                                   "--params", "/nonexistent.yaml", "--set", "distill.start_steps=12"])
    assert res.exit_code == 2 and "distill.start_steps=12 must be distill.steps=4" in res.output, res.output
    res = CliRunner().invoke(app, ["distill", "--teacher", "x", "--steps", "3", "--params", "/nonexistent.yaml",
                                   "--dry-run"])
    assert res.exit_code == 2 and "distill.steps: 3 is not one of 1, 2, 4, 8, 16" in res.output, res.output
    res = CliRunner().invoke(app, ["distill", "--teacher", "x", "--params", "/nonexistent.yaml", "--dry-run",
                                   "--set", "distill.start_steps=24"])
    assert res.exit_code == 2 and "distill.start_steps=24 must be distill.steps=8" in res.output, res.output
    assert not (tmp_path / "runs").exists()


def test_retrain_flow_distils_only_a_promotion_and_only_when_asked() -> None:
    from flows.retrain import retrain_summary
    from flows.tasks import distill_wanted
    from sdm.config import resolve

    off, on = resolve(params=REPO / "params.yaml"), resolve(params=REPO / "params.yaml",
                                                            overrides=["distill.in_retrain=true"])
    assert off.distill.in_retrain is False  # the demo default
    assert not distill_wanted(off, {"decision": "promoted"})
    assert distill_wanted(on, {"decision": "promoted"})
    assert not distill_wanted(on, {"decision": "kept"}) and not distill_wanted(on, {"decision": "not requested"})
    summary = retrain_summary({"run_name": "r", "registration": {"name": "m", "version": "3"},
                               "distilled": {"model_uri": "models:/m-distilled/1", "teacher": "models:/m/3"}})
    assert "`models:/m-distilled/1` from `models:/m/3`" in summary


@pytest.mark.slow
def test_stages_run_on_two_ray_workers(project, ray_cluster) -> None:
    """The stages are ordinary Ray training runs: the objective (and its frozen teacher) is built inside each
    worker. Two workers see other per-rank randomness than one, so the weights differ from the local run's."""
    from sdm.model import load_checkpoint, read_checkpoint_meta

    result = distill(_config(project), teacher=str(project["teacher"]), run_name="on-ray", workers=2,
                     log_mlflow=False, echo=lambda s: None)
    for stage in ("guidance", "halve-4"):
        assert read_checkpoint_meta(result.run_dir / stage / "final")["world_size"] == 2
    model, cfg = load_checkpoint(result.final_dir)
    assert model.guidance_embedded and cfg.sample.sampler == "renoise"
