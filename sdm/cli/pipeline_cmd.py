"""``sdm pipeline``: run the whole retraining pipeline (Prefect flow ``retrain``) or serve it on its schedule.

Prefect is imported only inside these commands: the library itself never imports it.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from sdm.cli.common import DryRunOpt, ParamsOpt, PresetOpt, SetOpt, dry_run_exit, load_config, user_errors

app = typer.Typer(help="The retraining pipeline: data -> train -> evaluate -> register, as Prefect flows.",
                  no_args_is_help=True)


@app.command("run")
def run(
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Move the champion alias when better."),
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push the prepared data."),
    workers: int | None = typer.Option(None, "--workers", help="Ray workers (default train.workers)."),
    force: bool = typer.Option(False, "--force", help="Train even when the champion is up to date "
                               "(same data, training params and code)."),
    dry_run: DryRunOpt = False,
) -> None:
    """Run `retrain` once on the embedded defaults (ephemeral Prefect, local Ray, sqlite MLflow, local DVC)."""
    cfg = load_config(preset, set_, params)
    dry_run_exit(cfg, dry_run)
    from flows.tasks import check_overrides

    with user_errors():
        check_overrides(list(set_ or []))
    from flows.retrain import retrain

    start = time.monotonic()
    with user_errors():
        result = retrain(preset=preset, overrides=list(set_ or []), promote=promote, push=push, workers=workers,
                         params_file=str(params), force=force)
    minutes = (time.monotonic() - start) / 60
    plan = result["plan"]
    if plan["action"] == "up-to-date":
        typer.echo("")
        typer.echo(f"Pipeline finished in {minutes:.1f} min: {plan['reason']}.")
        typer.echo(f"  data version : {result['data_version']}")
        typer.echo("  (nothing trained, nothing registered; `sdm pipeline run --force` trains anyway)")
        return
    reg = result["registration"]
    metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    typer.echo("")
    typer.echo(f"Pipeline finished in {minutes:.1f} min.")
    typer.echo(f"  decision     : {plan['action']}: {plan['reason']}")
    typer.echo(f"  data version : {result['data_version']}" + (" (unchanged)" if result["data_cached"] else ""))
    typer.echo(f"  checkpoint   : {result['checkpoint']}")
    typer.echo(f"  model        : models:/{reg['name']}/{reg['version']}  aliases: {', '.join(reg['aliases'])}")
    reason = f" ({reg['reason']})" if reg.get("reason") else ""
    typer.echo(f"  promotion    : {reg['decision']}{reason}")
    typer.echo("  metrics      :")
    for key in sorted(metrics):
        value = metrics[key]
        typer.echo(f"    {key:<24} {value:.4g}" if isinstance(value, float) else f"    {key:<24} {value}")
    typer.echo("Look at it:")
    if result["grid"]:
        typer.echo(f"  sample grid  : {result['grid']}")
    if result.get("comparison_grid"):
        typer.echo(f"  vs champion  : {result['comparison_grid']} (label map | real | champion | challenger)")
    typer.echo(f"  evaluation   : {result['evaluation']}")
    uri = result["tracking_uri"]
    typer.echo(f"  MLflow UI    : mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    typer.echo(f"  sample       : sdm sample --model models:/{reg['name']}@champion --labels <label PNGs> --out out/")


@app.command("serve")
def serve(
    prefect_yaml: Path = typer.Option(Path("prefect.yaml"), "--prefect-yaml", help="Where the deployment is."),
    name: str = typer.Option("retrain-nightly", "--name", help="The deployment to serve."),
) -> None:
    """Serve `retrain` on the schedule of prefect.yaml's deployment (needs PREFECT_API_URL of a Prefect server)."""
    from flows.retrain import serve as serve_flow

    with user_errors():
        serve_flow(prefect_yaml, name)
