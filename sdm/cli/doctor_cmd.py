"""``sdm doctor``: which services the resolved config points at, whether each answers and takes a write, the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import ParamsOpt, PresetOpt, SetOpt, load_config
from sdm.services import DEFAULT_TIMEOUT_S


def doctor(
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds each service gets to answer one request.")] = DEFAULT_TIMEOUT_S,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Check only this service (dvc, ray, mlflow, prefect; repeatable).")] = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check the DVC remote, the Ray cluster, the MLflow tracking store and the Prefect API: one line each.

    Exit code 0 when every checked service is OK (or could not be checked: SKIP), 1 when any FAILs.
    """
    from sdm.data.version import find_dvc_root
    from sdm.services.doctor import FAIL, diagnose, report_lines

    cfg = load_config(preset, set_, params)
    names = {"dvc": "DVC remote", "ray": "Ray cluster", "mlflow": "MLflow tracking", "prefect": "Prefect API"}
    unknown = [o for o in only or [] if o.lower() not in names]
    if unknown:
        typer.echo(f"error: --only {unknown[0]}: not a service (one of {', '.join(names)})", err=True)
        raise typer.Exit(2)
    root = find_dvc_root(Path.cwd()) or Path.cwd()
    findings = diagnose(cfg, root, timeout, only=[names[o.lower()] for o in only] if only else None)
    for line in report_lines(findings):
        typer.echo(line)
    raise typer.Exit(1 if any(f.status == FAIL for f in findings) else 0)
