"""``sdm distill``: a few-step student of a guided model (Meng et al. 2023 guided distillation).

    sdm distill --teacher DIR|models:/NAME/VERSION|models:/NAME@ALIAS [--steps K] [--run-name N]
                [--workers W] [--gpu] [--local] [--register/--no-register] [--no-mlflow] [--dry-run]

Each stage is an ordinary training run under <train.storage_path>/<run-name>/; rerunning the same command
skips the finished stages and resumes the interrupted one. The student: <storage_path>/<run-name>/final.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import (
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    dry_run_exit,
    flag_overrides,
    load_config,
    user_errors,
)


def distill(
    teacher: Annotated[str, typer.Option(
        "--teacher", help="The guided model to distil: a checkpoint directory (e.g. runs/<run>/final) or a "
                          "registered version, models:/NAME/VERSION or models:/NAME@ALIAS.")],
    steps: Annotated[int | None, typer.Option(
        "--steps", help="The student's sampling steps: 1, 2, 4, 8 or 16 (default: distill.steps); "
                        "distill.start_steps must be this times a power of two.")] = None,
    run_name: Annotated[str | None, typer.Option(
        "--run-name", help="The distillation's folder under train.storage_path (default: the student's model "
                           "name). Rerunning with the same name resumes it.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray workers (default: train.workers).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per worker.")] = False,
    local: Annotated[bool, typer.Option("--local", help="One worker in this process, without Ray.")] = False,
    register: Annotated[bool, typer.Option(
        "--register/--no-register", help="Evaluate the student with its own sampler and register it as a "
                                         "version of distill.model_name with lineage to its teacher.")] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the stages to MLflow.")] = False,
    device: Annotated[str, typer.Option("--device", help="Evaluation device for --register: auto, cpu or "
                                        "cuda.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray's and the workers' own logs.")] = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Distil a guided model into a student that samples in K steps (one network pass each)."""
    cfg = load_config(preset, set_, params, [*flag_overrides("distill", steps=steps),
                                             *flag_overrides("train", use_gpu=True if gpu else None)])
    from sdm.distill.run import distill as run_distill
    from sdm.distill.run import halving_rounds

    with user_errors():
        halving_rounds(cfg.distill)  # start_steps = steps * 2**r: checked for --dry-run too
    dry_run_exit(cfg, dry_run)
    from sdm.eval.runner import default_device
    from sdm.train import TrainingFailed

    with user_errors():
        try:
            result = run_distill(cfg, teacher=teacher, run_name=run_name, workers=workers,
                                 use_gpu=True if gpu else None, local=local, register=register,
                                 log_mlflow=not no_mlflow, verbose=verbose,
                                 device=default_device() if device == "auto" else device)
        except TrainingFailed as e:
            typer.echo(f"error: {e}", err=True)  # the run failed, not the input: exit code 1
            raise typer.Exit(1) from None
    wall = f"{result.wall_time_s:.0f} s" if result.wall_time_s is not None else "not recorded for every stage"
    typer.echo(f"student: {result.final_dir} (teacher {result.teacher_uri}; distillation wall time {wall})")
    if result.registered is not None:
        typer.echo(f"registered {result.registered.name} version {result.registered.version} "
                   f"({result.registered.model_uri})")
