"""``sdm reproduce``: re-create a registered model version from its lineage and compare the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import ParamsOpt, load_config, user_errors


def reproduce(
    model: Annotated[str, typer.Argument(help="The version to re-create: models:/NAME/VERSION or models:/NAME@ALIAS.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the restored data, the new training run and report.json "
                      "(default: reproduce/<NAME>-v<VERSION>).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out even when it is not a reproduction sdm wrote.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Restore the version's data from the DVC remote, retrain with its recorded config, compare the weights.

    Exit 0: identical weights (or another kind of machine: the figures are printed side by side);
    1: different weights on the same kind of machine; 2: the version cannot be reproduced here (unknown,
    its data not in the remote, other code: the commands that restore the recorded code are printed).
    """
    cfg = load_config(None, None, params)
    from sdm.data.version import DataVersionError
    from sdm.registry.model_uri import parse_model_uri
    from sdm.reproduce.rerun import reproduce as run

    with user_errors():
        name, alias, version = parse_model_uri(model, "MODEL")
        target = out or Path("reproduce") / f"{name}-{f'v{version}' if version else alias}"
        try:
            result = run(model, target, cfg, overwrite=overwrite, log=typer.echo)
        except DataVersionError as e:  # DVC failed for another reason than missing data (an outage): exit 1
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(result.summary())
    raise typer.Exit(result.exit_code)
