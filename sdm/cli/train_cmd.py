"""``sdm train``: pretrain then finetune the SPADE diffusion U-Net on Ray Train workers.

    sdm train [--preset P] [--set k=v ...] [--run-name NAME] [--workers N] [--gpu]
              [--phase all|pretrain|finetune] [--init-from DIR|models:/NAME@ALIAS] [--local] [--dry-run]

Rerunning the same command resumes from the run's latest checkpoint.
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
from sdm.cli.model_source import init_source


def train(
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    run_name: Annotated[str | None, typer.Option(
        "--run-name", help="The run's folder under train.storage_path (default: register.model_name). "
                           "Rerunning with the same name resumes it.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray workers (default: train.workers).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per worker (bf16 autocast).")] = False,
    phase: Annotated[str | None, typer.Option(
        "--phase", help="all, pretrain or finetune (default: train.phases).")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Start from this checkpoint directory's weights and EMA (e.g. a pretrain run's "
                            "final/ for --phase finetune), or a registered model's: models:/NAME@ALIAS "
                            "or models:/NAME/VERSION.")] = None,
    local: Annotated[bool, typer.Option("--local", help="One worker in this process, without Ray.")] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", help="MLflow experiment (default: register.model_name).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray's and the workers' own logs.")] = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Train (or resume) a run: checkpoints, final EMA checkpoint in <storage_path>/<run-name>/final."""
    # --gpu only ever turns GPUs on: without it, train.use_gpu from the config stands.
    cfg = load_config(preset, set_, params, flag_overrides("train", use_gpu=True if gpu else None))
    dry_run_exit(cfg, dry_run)
    from sdm.train import TrainingFailed
    from sdm.train import train as run_train

    with user_errors(), init_source(init_from, cfg) as (init_dir, init_label):
        try:
            result = run_train(cfg, run_name=run_name or cfg.register.model_name, workers=workers,
                               use_gpu=True if gpu else None, phase=phase, init_from=init_dir, local=local,
                               log_mlflow=not no_mlflow, experiment=experiment, verbose=verbose,
                               init_label=init_label)
        except TrainingFailed as e:
            # The run itself failed (workers crashed past train.max_failures): not bad input, but its own
            # message and exit code 1; the workers' tracebacks are in their logs.
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"final checkpoint: {result.final_dir}")
