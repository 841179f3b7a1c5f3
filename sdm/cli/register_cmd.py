"""``sdm register``: an evaluated checkpoint becomes a registered MLflow model version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import (
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    checkpoint_dir,
    dry_run_exit,
    load_config,
    metrics_file,
    user_errors,
)
from sdm.errors import InputError


def register(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint directory (model.safetensors + "
                                             "config.json), e.g. runs/<run>/final.")],
    metrics: Annotated[Path, typer.Option("--metrics", help="The checkpoint's evaluation: metrics.json written "
                                          "by `sdm evaluate --out DIR` (or DIR itself).")],
    name: Annotated[str | None, typer.Option(
        "--name", help="Registered model name (default: register.model_name).")] = None,
    alias: Annotated[str | None, typer.Option(
        "--alias", help="Alias for the new version (default: register.alias).")] = None,
    promote: Annotated[bool | None, typer.Option(
        "--promote/--no-promote",
        help="Move the champion alias to this version when the register.promotion rule says it beats the "
             "champion (compared with the champion's recorded figures; `sdm pipeline` re-evaluates it on the "
             "same data) (default: register.promote).")] = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Register a checkpoint with its metrics: lineage tags, alias, and (maybe) promotion to champion."""
    cfg = load_config(preset, set_, params)
    dry_run_exit(cfg, dry_run)
    from mlflow.exceptions import MlflowException

    from sdm.registry.register import register_checkpoint
    from sdm.tracking import tracking_uri

    with user_errors():
        checkpoint, metrics = checkpoint_dir(checkpoint), metrics_file(metrics)
        try:
            result = register_checkpoint(checkpoint, metrics, cfg, name=name, alias=alias, promote=promote)
        except MlflowException as e:
            from sdm.retry_policy import is_transient

            if is_transient(e):
                # An outage, not bad input (exit 1); registration is idempotent, so the same command again is safe.
                typer.echo(f"error: MLflow ({tracking_uri(cfg)}) did not answer: {e.message}\nrun the same command "
                           "again: it finishes this checkpoint's version, never makes a second one", err=True)
                raise typer.Exit(1) from None
            # An MLflow store that cannot answer (wrong URI, broken database): say which store, no traceback.
            raise InputError(f"MLflow ({tracking_uri(cfg)}): {e.message}") from None
    decision = result.promotion
    typer.echo(f"registered {result.name} version {result.version} ({result.model_uri}, run {result.run_id})")
    if result.already_registered:
        typer.echo("  (this checkpoint was registered before: the same version, with the figures and decision "
                   "recorded then; only the alias was set)")
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(result.aliases.items()))
    typer.echo(f"aliases: {aliases}")
    if decision is not None:
        typer.echo(f"promotion: {decision.decision}: {decision.reason}")
    typer.echo(f"lineage: git {result.tags['lineage.git_commit'][:12]}, data {result.tags['lineage.data_version']}, "
               f"params {result.tags['lineage.params_hash'][:12]}")
