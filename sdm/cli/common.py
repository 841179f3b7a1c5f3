"""Options and error handling shared by every ``sdm`` command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sdm.config import Config, ConfigError, dump_yaml, resolve
from sdm.config.schema import SAMPLER_NAMES

PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Named settings: toy, ade20k, cityscapes, celebamask-hq, coco-stuff.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one parameter, e.g. --set train.batch_size=8 (repeatable)."),
]
ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file to read.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and stop.")]
# For --sampler help texts: the names config validation accepts.
SAMPLER_CHOICES = ", ".join(SAMPLER_NAMES)


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, exit code 2."""


T = TypeVar("T")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn known input problems into a message on stderr and exit code 2."""
    try:
        yield
    except (ConfigError, UserError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except ValueError as e:
        # sdm's own input errors (CheckpointError, LabelRangeError, ImageSizeError,
        # DataProblemsError, ...) are ValueError subclasses defined in sdm; others are bugs.
        if not type(e).__module__.startswith("sdm."):
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def load_config(preset: str | None, sets: list[str] | None, params: Path = Path("params.yaml")) -> Config:
    with user_errors():
        return resolve(preset=preset, overrides=sets or [], params=params)


def dry_run_exit(cfg: Config, dry_run: bool) -> None:
    """With ``--dry-run``: print the resolved config and stop."""
    if dry_run:
        sys.stdout.write(dump_yaml(cfg))
        raise typer.Exit(0)


def run_guarded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with user_errors():
        return fn(*args, **kwargs)
