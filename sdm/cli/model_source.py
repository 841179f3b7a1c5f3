"""``--checkpoint DIR`` or ``--model models:/NAME@ALIAS``: where a command's checkpoint comes from.

A registered model is downloaded (its ``checkpoint`` artifact: safetensors +
config.json) to a temporary directory that lives for the command, so the rest
of the command runs exactly as with ``--checkpoint``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from sdm.cli.common import checkpoint_dir
from sdm.config import Config
from sdm.errors import InputError

MODEL_HELP = ("A registered model instead of --checkpoint: models:/NAME@ALIAS (e.g. models:/sdm-toy@champion) "
              "or models:/NAME/VERSION, from the MLflow store (MLFLOW_TRACKING_URI or mlflow/mlflow.db).")


@contextmanager
def checkpoint_source(checkpoint: Path | None, model: str | None, config: Config) -> Iterator[Path]:
    """The checkpoint directory to use: ``checkpoint``, or ``model``'s registered version downloaded."""
    with labeled_checkpoint_source(checkpoint, model, config) as (path, _):
        yield path


@contextmanager
def labeled_checkpoint_source(checkpoint: Path | None, model: str | None,
                              config: Config) -> Iterator[tuple[Path, str]]:
    """(checkpoint directory, what to record as its source): the directory's absolute path, or
    ``models:/NAME/VERSION`` with the alias resolved, so an output says which version made it."""
    if (checkpoint is None) == (model is None):
        raise InputError("give exactly one of --checkpoint DIR or --model models:/NAME@ALIAS")
    if model is None:
        assert checkpoint is not None
        checkpoint = checkpoint_dir(checkpoint)
        yield checkpoint, str(checkpoint.resolve())
        return
    from mlflow.exceptions import MlflowException

    from sdm.registry.model_uri import checkpoint_from_registry
    from sdm.tracking import tracking_uri

    with tempfile.TemporaryDirectory(prefix="sdm-model-") as tmp:
        try:
            got = checkpoint_from_registry(model, tmp, config)
        except MlflowException as e:
            # An MLflow store that cannot answer (wrong URI, broken database): say which store, no traceback.
            raise InputError(f"--model {model}: MLflow ({tracking_uri(config)}): {e.message}") from None
        typer.echo(f"--model {model}: {got.name} version {got.version}", err=True)
        yield got.path, f"models:/{got.name}/{got.version}"


@contextmanager
def init_source(init_from: str | None, config: Config) -> Iterator[tuple[Path | None, str | None]]:
    """``--init-from``: (checkpoint directory, what to record as its source) for a directory or a models:/ URI.

    A registered version is downloaded for the command's lifetime (the training run reads it
    at its start; a later resume continues from the run's own checkpoints) and recorded as
    ``models:/NAME/VERSION`` (the alias resolved), so the lineage says which version it was.
    """
    if init_from is None:
        yield None, None
        return
    if not init_from.startswith("models:/"):
        yield checkpoint_dir(Path(init_from), "--init-from"), None
        return
    from mlflow.exceptions import MlflowException

    from sdm.registry.model_uri import checkpoint_from_registry
    from sdm.tracking import tracking_uri

    with tempfile.TemporaryDirectory(prefix="sdm-init-") as tmp:
        try:
            got = checkpoint_from_registry(init_from, tmp, config, flag="--init-from")
        except MlflowException as e:
            raise InputError(f"--init-from {init_from}: MLflow ({tracking_uri(config)}): {e.message}") from None
        typer.echo(f"--init-from {init_from}: {got.name} version {got.version}", err=True)
        yield got.path, f"models:/{got.name}/{got.version}"
