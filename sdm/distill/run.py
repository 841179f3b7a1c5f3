"""``sdm distill`` as a function: a teacher checkpoint in, a few-step student checkpoint out.

The distillation run folder ``<train.storage_path>/<run-name>/`` holds:

- ``teacher/``: a copy of the teacher (a directory or a registered ``models:/`` version, downloaded), so the
  stages never depend on a temp download or on an alias that moves;
- ``distill.json``: the plan (teacher URI, version, sha256, the distill settings, the stages with their wall
  times as they finish); a rerun with other settings or another teacher is refused (use a new --run-name);
- ``student-init/``: the teacher's EMA weights plus the zero-initialised guidance embedding
  (``sdm.distill.student.init_student_checkpoint``);
- one ordinary training run per stage (``sdm.train.launch.train``, ``train.storage_path`` = this folder):
  ``guidance/`` (stage one), then ``halve-<n>/`` for n = start_steps, start_steps/2, ..., 2*steps (stage two,
  the student of each round learns in one step what its teacher, the previous stage's final, does in two).
  Each reuses everything of training: checkpoints, resume, Ray workers, MLflow (experiment = the student's
  model name), train_log.jsonl;
- ``final/``: the last stage's final with the student's config and meta (teacher URI, version and sha256,
  the stages, the wall time): an ordinary sdm checkpoint that samples with its own sampler (``renoise`` on
  its grid).

A rerun skips finished stages (their ``final/`` exists) and resumes the interrupted one from its newest
checkpoint, so a distillation killed at any point ends on the same weights as one run straight through
(with the same number of workers). The run folder is locked for the whole call (``sdm.locks``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.atomic import atomic_dir
from sdm.config import Config, ConfigError, PhaseConfig, to_dict
from sdm.config.schema import DistillConfig
from sdm.distill.register import student_settings
from sdm.errors import InputError
from sdm.model import CONFIG_FILE, MODEL_FILE
from sdm.train.events import Hook

PLAN_FILE = "distill.json"
TEACHER_DIR = "teacher"
INIT_DIR = "student-init"
FINAL_DIR = "final"
GUIDANCE_STAGE = "guidance"
# The settings a run folder is tied to: a rerun with any of them changed would mix two distillations.
PLAN_KEYS = ("steps", "start_steps", "guidance_range", "guidance_train_steps", "halving_train_steps", "lr")


class DistillError(InputError):
    """A distillation input that cannot work (teacher, settings, run folder); the message names it."""


@dataclass(frozen=True)
class Stage:
    """One training run of the distillation: its folder name, teacher grid size (0: stage one) and steps."""

    name: str
    teacher_steps: int
    train_steps: int


@dataclass
class DistillResult:
    run_dir: Path
    final_dir: Path
    model_name: str
    teacher_uri: str
    teacher_version: str
    teacher_sha256: str
    stages: list[dict[str, Any]]
    wall_time_s: float | None  # the stages' recorded wall times summed (None when one was not recorded)
    registered: Any = None  # sdm.registry.register.RegisterResult with --register


def halving_rounds(distill: DistillConfig, num_timesteps: int | None = None) -> list[int]:
    """The teacher grid sizes of stage two: start_steps, start_steps/2, ..., 2*steps ([] when equal).

    Raises ConfigError naming ``distill.start_steps`` / ``distill.steps`` unless start_steps = steps * 2**r,
    and ``diffusion.steps`` when the grid would have more steps than the process (``num_timesteps``, the
    teacher's; None: not checked) has timesteps."""
    k, start = distill.steps, distill.start_steps
    ratio = start // k if start % k == 0 else 0
    if ratio < 1 or ratio & (ratio - 1):
        ups = ", ".join(str(k * 2 ** r) for r in range(1, 5))
        raise ConfigError(f"distill.start_steps={start} must be distill.steps={k} times a power of two "
                          f"(e.g. {ups}): each halving round halves the teacher's steps down to distill.steps")
    if num_timesteps is not None and start > num_timesteps:
        raise ConfigError(f"distill.start_steps={start} is more than diffusion.steps={num_timesteps} timesteps")
    lo, hi = (float(w) for w in distill.guidance_range)
    if not 0.0 <= lo <= hi:
        raise ConfigError(f"distill.guidance_range={distill.guidance_range}: expected [w_min, w_max] "
                          "with 0 <= w_min <= w_max")
    rounds, n = [], start
    while n > k:
        rounds.append(n)
        n //= 2
    return rounds


def plan_stages(distill: DistillConfig, num_timesteps: int | None = None) -> list[Stage]:
    """Stage one, then one halving round per teacher grid size."""
    return [Stage(GUIDANCE_STAGE, 0, distill.guidance_train_steps),
            *(Stage(f"halve-{n}", n, distill.halving_train_steps) for n in halving_rounds(distill, num_timesteps))]


def student_model_name(config: Config) -> str:
    return config.distill.model_name or f"{config.register.model_name}-distilled"


@contextmanager
def teacher_source(teacher: str, config: Config) -> Iterator[tuple[Path, str, str]]:
    """(checkpoint dir, URI, version) of ``--teacher``: a directory (version "none") or a registered
    ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (downloaded for the block; the alias resolved)."""
    if not teacher.startswith("models:/"):
        path = Path(teacher).expanduser().resolve()
        if not (path / CONFIG_FILE).is_file() and (path / FINAL_DIR / CONFIG_FILE).is_file():
            raise DistillError(f"--teacher {teacher}: a training run folder, not a checkpoint; its exported "
                               f"model is {path / FINAL_DIR}")
        if not (path / CONFIG_FILE).is_file() or not (path / MODEL_FILE).is_file():
            what = "no such directory" if not path.exists() else f"no {MODEL_FILE} + {CONFIG_FILE} in it"
            raise DistillError(f"--teacher {teacher}: not an sdm checkpoint directory ({what}); give a "
                               "checkpoint such as runs/<run>/final or models:/NAME@ALIAS")
        yield path, str(path), "none"
        return
    from mlflow.exceptions import MlflowException

    from sdm.registry.model_uri import checkpoint_from_registry
    from sdm.tracking import tracking_uri

    with tempfile.TemporaryDirectory(prefix="sdm-teacher-") as tmp:
        try:
            got = checkpoint_from_registry(teacher, tmp, config, flag="--teacher")
        except MlflowException as e:
            raise DistillError(f"--teacher {teacher}: MLflow ({tracking_uri(config)}): {e.message}") from None
        yield got.path, f"models:/{got.name}/{got.version}", got.version


def check_teacher(path: Path, teacher: str) -> Config:
    """The teacher's config, after its weights load (checksums, shapes); a student is refused as a teacher."""
    from sdm.model import load_checkpoint

    try:
        _, cfg = load_checkpoint(path, use_ema=True)
    except (FileNotFoundError, InputError) as e:
        raise DistillError(f"--teacher {teacher}: {e}") from None
    if getattr(cfg.model, "guidance_embed", False):
        raise DistillError(f"--teacher {teacher}: already a distilled student (model.guidance_embed is true); "
                           "distil the model it was distilled from")
    return cfg


def _plan_doc(distill: DistillConfig, stages: list[Stage], teacher_uri: str, version: str, sha: str,
              model_name: str, source: str) -> dict[str, Any]:
    return {"teacher": {"source": source, "uri": teacher_uri, "version": version, "checkpoint_sha256": sha},
            "model_name": model_name, "settings": {k: getattr(distill, k) for k in PLAN_KEYS},
            "stages": [{"name": s.name, "teacher_steps": s.teacher_steps, "train_steps": s.train_steps,
                        "wall_s": None} for s in stages]}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)  # a reader sees the old plan or the new one, never half of one


def _check_rerun(run_dir: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """The recorded plan of ``run_dir`` (its stage times kept); an error when it was another distillation."""
    path = run_dir / PLAN_FILE
    if not path.is_file():
        return plan
    old = json.loads(path.read_text())
    changed = [f"distill.{k}: was {old['settings'].get(k)!r}, now {v!r}"
               for k, v in plan["settings"].items() if old["settings"].get(k) != v]
    if old["teacher"]["checkpoint_sha256"] != plan["teacher"]["checkpoint_sha256"]:
        changed.append(f"teacher: was {old['teacher']['uri']} (sha256 {old['teacher']['checkpoint_sha256'][:12]}), "
                       f"now {plan['teacher']['uri']} (sha256 {plan['teacher']['checkpoint_sha256'][:12]})")
    if changed:
        raise DistillError(f"{run_dir}: this distillation was started with other inputs ({'; '.join(changed)}); "
                           "rerun it with the same ones to resume, or give a new --run-name")
    walls = {s["name"]: s.get("wall_s") for s in old.get("stages", [])}
    for s in plan["stages"]:
        s["wall_s"] = walls.get(s["name"])
    return plan


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Every file of checkpoint ``src`` into ``dst``, atomically (a rerun finds all of it or none)."""
    with atomic_dir(dst) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def stage_config(base: Config, student: Config, teacher_cfg: Config, stage: Stage, teacher_dir: Path,
                 storage: Path) -> Config:
    """One stage's training config: the command's data and training settings, the student's model and
    sampling, phases ["finetune"] at the distill steps / lr with no label drop, the stage's distill fields."""
    d = dataclasses.replace(student.distill, stage="halve" if stage.teacher_steps else "guidance",
                            teacher=str(teacher_dir), teacher_steps=stage.teacher_steps)
    # Each stage's student names the steps it was trained for (a halving round's: half its teacher's; stage
    # one's: the grid stage two starts from), so an intermediate final/ samples right with no flags too.
    own = stage.teacher_steps // 2 if stage.teacher_steps else d.start_steps
    sample = dataclasses.replace(student.sample, steps=own)
    evaluate = dataclasses.replace(student_settings(base, student).evaluate, steps=own)
    phase = PhaseConfig(steps=stage.train_steps, lr=d.lr, drop_rate=0.0, warmup_steps=0, lr_schedule="constant")
    # Not trained (phases is ["finetune"]): the teacher's label drop, so the stage's sample grid samples at
    # sample.guidance_scale (sdm.train.loop.grid_guidance_scale), inside the student's guidance_range.
    pretrain = dataclasses.replace(base.train.pretrain, drop_rate=teacher_cfg.train.finetune.drop_rate)
    train = dataclasses.replace(base.train, phases=["finetune"], finetune=phase, pretrain=pretrain,
                                storage_path=str(storage))
    # The student's serving limits (its sampler, its guidance range) travel in its checkpoints' config.
    register = dataclasses.replace(base.register, model_name=student.register.model_name,
                                   serving=student.register.serving)
    return dataclasses.replace(base, model=student.model, diffusion=student.diffusion, sample=sample,
                               evaluate=evaluate, register=register, train=train, distill=d)


def distill(
    config: Config,
    *,
    teacher: str,
    run_name: str | None = None,
    workers: int | None = None,
    use_gpu: bool | None = None,
    local: bool = False,
    register: bool = False,
    log_mlflow: bool = True,
    verbose: bool = False,
    echo: Callable[[str], Any] | None = None,
    worker_hooks: Sequence[Hook] = (),
    device: str = "cpu",
) -> DistillResult:
    """Distil ``teacher`` (a checkpoint dir or ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS``) into a student
    that samples in ``config.distill.steps`` steps; returns where its final checkpoint is.

    ``run_name`` (default: the student's model name) is the folder under ``train.storage_path``; rerunning
    resumes it. ``workers`` / ``use_gpu`` / ``local`` / ``log_mlflow`` / ``worker_hooks`` as for
    ``sdm.train.train`` (every stage). ``register``: evaluate the student (``device``) and register it as a
    version of ``distill.model_name`` with lineage tags to its teacher (``sdm.distill.register``).
    Every input is checked before anything is written.
    """
    from sdm.distill.student import init_student_checkpoint
    from sdm.locks import lock_target
    from sdm.train.launch import absolute_paths, check_run_name, train

    say = echo or (lambda s: print(s, file=sys.stdout, flush=True))
    model_name = student_model_name(config)
    name = check_run_name(run_name or model_name)
    plan_stages(config.distill)  # bad settings fail before any download (the teacher's T: below)
    config = absolute_paths(config)
    run_dir = Path(config.train.storage_path) / name
    with teacher_source(teacher, config) as (source_dir, teacher_uri, version), \
            _checked(source_dir, teacher, config) as (teacher_cfg, student, stages, sha), \
            lock_target(run_dir, f"distillation run {name!r} ({run_dir})"):
        plan = _check_rerun(run_dir, _plan_doc(config.distill, stages, teacher_uri, version, sha, model_name,
                                               teacher))
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / PLAN_FILE, plan)
        # From here on only the run folder's own copy of the teacher is read (not a temp download).
        teacher_dir = run_dir / TEACHER_DIR
        if not (teacher_dir / CONFIG_FILE).is_file():
            say(f"[distill] teacher {teacher_uri} -> {teacher_dir}")
            _copy_checkpoint(source_dir, teacher_dir)
        init_dir = run_dir / INIT_DIR
        if not (init_dir / CONFIG_FILE).is_file():
            init_student_checkpoint(teacher_dir, init_dir, student,
                                    {"init_from": teacher_uri, "step": 0, "ema_updates": 0})
        say(f"[distill] {teacher_uri} -> {model_name}: {' -> '.join(s.name for s in stages)} "
            f"({config.distill.steps} steps); run dir {run_dir}")
        prev_final = init_dir
        for i, stage in enumerate(stages):
            stage_final = run_dir / stage.name / FINAL_DIR
            if (stage_final / CONFIG_FILE).is_file():
                say(f"[distill] {stage.name}: done ({stage_final})")
            else:
                # Stage one's teacher is the original; each halving round's is the previous stage's student.
                cfg = stage_config(config, student, teacher_cfg, stage, teacher_dir if i == 0 else prev_final,
                                   run_dir)
                started = time.perf_counter()
                train(cfg, run_name=stage.name, workers=workers, use_gpu=use_gpu, init_from=prev_final,
                      local=local, log_mlflow=log_mlflow, experiment=model_name, verbose=verbose, echo=say,
                      worker_hooks=worker_hooks,
                      init_label=f"{teacher_uri} (student init)" if i == 0 else None)
                plan["stages"][i]["wall_s"] = round(time.perf_counter() - started, 3)
                _write_json(run_dir / PLAN_FILE, plan)
            prev_final = stage_final
        final = run_dir / FINAL_DIR
        walls = [s["wall_s"] for s in plan["stages"]]
        wall = round(sum(walls), 3) if all(w is not None for w in walls) else None
        if not (final / CONFIG_FILE).is_file():
            _export_final(prev_final, final, name, plan, wall)
        own = json.loads((final / CONFIG_FILE).read_text())["sample"]["sampler"]
        say(f"[distill] student: {final} ({config.distill.steps} steps, sampler {own})")
    result = DistillResult(run_dir=run_dir, final_dir=final, model_name=model_name, teacher_uri=teacher_uri,
                           teacher_version=version, teacher_sha256=sha, stages=plan["stages"], wall_time_s=wall)
    if register:
        from sdm.distill.register import register_student

        result.registered = register_student(final, config, name=model_name, log_mlflow=log_mlflow,
                                             device=device, log=say)
    return result


@contextmanager
def _checked(source_dir: Path, teacher: str, config: Config) -> Iterator[tuple[Config, Config, list[Stage], str]]:
    """(teacher config, student config, stages, teacher sha256) once the teacher loads and the data fits it."""
    from sdm.distill.student import student_config
    from sdm.registry.lineage import checkpoint_sha256

    teacher_cfg = check_teacher(source_dir, teacher)
    stages = plan_stages(config.distill, teacher_cfg.diffusion.steps)
    student = student_config(teacher_cfg, config.distill)
    _check_data(config, student)
    yield teacher_cfg, student, stages, checkpoint_sha256(source_dir)


def _check_data(config: Config, student: Config) -> None:
    """The prepared data fits the teacher's model (classes, image size): checked before anything is written."""
    from sdm.data.manifest import read_manifest
    from sdm.train.preflight import check_data

    prepared = Path(config.data.prepared)
    check_data(dataclasses.replace(config, model=student.model), read_manifest(prepared), prepared)


def _export_final(last: Path, final: Path, run_name: str, plan: dict[str, Any], wall: float | None) -> Path:
    """``final/``: the last stage's weights with the student's config (no stage fields) and the run's meta."""
    from safetensors.torch import load_file

    from sdm.checksums import verify_files
    from sdm.model import EMA_FILE, read_checkpoint_config, read_checkpoint_meta, recorded_sha256, save_checkpoint

    cfg = read_checkpoint_config(last)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, stage="", teacher="", teacher_steps=0))
    verify_files(last, recorded_sha256(last), [MODEL_FILE, EMA_FILE])
    meta = read_checkpoint_meta(last)
    t = plan["teacher"]
    meta.update({
        "run_name": run_name, "init_from": t["uri"],
        "distill": {"teacher_uri": t["uri"], "teacher_version": t["version"],
                    "teacher_checkpoint_sha256": t["checkpoint_sha256"], "steps": cfg.distill.steps,
                    "guidance_range": list(cfg.distill.guidance_range), "stages": plan["stages"],
                    "wall_time_s": wall, "config": to_dict(cfg.distill)},
    })
    return save_checkpoint(final, load_file(str(last / MODEL_FILE)), cfg, ema_state=load_file(str(last / EMA_FILE)),
                           meta=meta)
