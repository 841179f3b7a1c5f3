"""``sdm convert-official``: an official SDM release checkpoint (.pt) becomes our checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import DryRunOpt, ParamsOpt, PresetOpt, SetOpt, dry_run_exit, load_config, user_errors
from sdm.errors import InputError


def _flags(items: list[str]) -> dict[str, str]:
    flags = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--official-flag {item!r}: expected name=value, e.g. --official-flag image_size=256")
        key, value = item.split("=", 1)
        flags[key.strip().lstrip("-")] = value.strip()
    return flags


def convert_official(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="The official .pt state dict (loaded with "
                                             "torch.load(weights_only=True); nothing is unpickled).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint directory to write (model.safetensors + "
                                      "config.json + meta.json); replaced atomically when it is a checkpoint "
                                      "sdm wrote (else see --overwrite).")],
    official_flag: Annotated[list[str] | None, typer.Option(
        "--official-flag",
        help="An official script flag (repeatable), e.g. --official-flag image_size=256 --official-flag "
             "num_classes=151: sets the model section (and data.image_size) the way the official scripts would, "
             "with the official defaults for flags not given. Applied after --preset, before --set.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even when it is not a "
                                            "checkpoint sdm wrote (never the input .pt's folder).")] = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Convert an official SDM checkpoint for the model configured by --preset / --official-flag / --set."""
    from sdm.official_checkpoint import convert_official as convert
    from sdm.official_checkpoint import official_flag_overrides

    with user_errors():
        derived = official_flag_overrides(_flags(official_flag)) if official_flag else []
    cfg = load_config(preset, [*derived, *(set_ or [])], params)
    dry_run_exit(cfg, dry_run)
    with user_errors():
        written = convert(checkpoint, cfg, out, overwrite=overwrite)
    m = cfg.model
    typer.echo(f"wrote {written} (model {m.image_size[0]}x{m.image_size[1]}, {m.num_classes} classes"
               f"{' + instance edges' if m.use_instance else ''}, {m.model_channels} channels) from {checkpoint}")
