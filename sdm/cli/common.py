"""Options, config loading and the one error rule shared by every ``sdm`` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from sdm.config import Config, dump_yaml, resolve
from sdm.config.schema import SAMPLER_NAMES
from sdm.errors import InputError

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


@contextmanager
def user_errors() -> Iterator[None]:
    """The CLI's one error rule: bad input is ``error: <message>`` on stderr and exit code 2.

    Bad input is an :class:`~sdm.errors.InputError` (every named user-facing
    error of sdm derives from it), or a ``FileNotFoundError``: a missing file is
    a path the user named (a flag, params.yaml, prefect.yaml) that code outside
    sdm's own checks (``open``, the Prefect flows) reports with the builtin.
    Anything else is a bug or an outage and keeps its traceback.
    """
    try:
        yield
    except (InputError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def checkpoint_dir(path: Path, flag: str = "--checkpoint") -> Path:
    """``path`` itself, unless it is a near miss with one likely fix: a training run folder -> its ``final/``.

    ``runs/<run>`` holds ``final/`` (the exported model) beside its resumable checkpoints; naming the run
    instead of its export is the common slip. Any other problem is left to the checkpoint loader's message.
    """
    if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        raise InputError(f"{flag} {path}: a training run folder, not a checkpoint; its exported model is "
                         f"{path / 'final'}: `{flag} {path / 'final'}`")
    return path


def metrics_file(path: Path, flag: str = "--metrics") -> Path:
    """``path``, or ``path/metrics.json`` when ``path`` is a folder (an ``sdm evaluate --out`` folder)."""
    if path.is_dir():
        inside = path / "metrics.json"
        if not inside.is_file():
            raise InputError(f"{flag} {path}: a folder without metrics.json; give the metrics.json that "
                             f"`sdm evaluate --out DIR` wrote (DIR/metrics.json)")
        return inside
    return path


def flag_overrides(section: str, **flags: Any) -> list[str]:
    """``section.key=<json>`` overrides for the flags that were given (not None), for :func:`load_config`.

    A command's explicit flags are merged like ``--set``s (JSON is valid YAML),
    so the config's own validation checks them and its messages name the key,
    e.g. ``flag_overrides("sample", steps=7, sampler=None)`` -> ``["sample.steps=7"]``.
    Paths become strings.
    """
    return [f"{section}.{key}={json.dumps(value, default=str)}" for key, value in flags.items() if value is not None]


def given_keys(section: str, sets: Sequence[str] | None, **flags: Any) -> set[str]:
    """The keys of ``section`` set on the command line: flags given (not None) and ``--set section.key=...``.

    A distilled student's own sampler and steps replace params.yaml's, but never what the user typed here.
    """
    given = {key for key, value in flags.items() if value is not None}
    prefix = f"{section}."
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        if key.startswith(prefix):
            given.add(key[len(prefix):].split(".", 1)[0])
    return given


def load_config(preset: str | None, sets: list[str] | None, params: Path = Path("params.yaml"),
                flags: Sequence[str] = ()) -> Config:
    """The resolved config; later layers win: defaults < params.yaml < ``--preset`` < ``--set`` < ``flags``.

    ``flags`` are a command's explicit options, from :func:`flag_overrides`.
    """
    with user_errors():
        return resolve(preset=preset, overrides=[*(sets or []), *flags], params=params)


def dry_run_exit(cfg: Config, dry_run: bool) -> None:
    """With ``--dry-run``: print the resolved config and stop."""
    if dry_run:
        sys.stdout.write(dump_yaml(cfg))
        raise typer.Exit(0)
