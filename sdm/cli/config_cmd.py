"""``sdm config``: inspect the resolved configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sdm.cli.common import ParamsOpt, PresetOpt, SetOpt, load_config
from sdm.config import available_presets, dump_yaml

app = typer.Typer(help="Inspect the resolved configuration (params.yaml + preset + --set).", no_args_is_help=True)


@app.command("show")
def show(preset: PresetOpt = None, set_: SetOpt = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Print the resolved configuration as YAML."""
    cfg = load_config(preset, set_, params)
    sys.stdout.write(dump_yaml(cfg))


@app.command("presets")
def presets() -> None:
    """List the named presets."""
    for name in available_presets():
        typer.echo(name)
