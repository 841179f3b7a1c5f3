"""``sdm pipeline``: run the whole retraining pipeline (Prefect flow ``retrain``) or serve it on its schedule.

Prefect is imported only inside these commands: the library itself never imports it.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sdm.cli.common import DryRunOpt, ParamsOpt, PresetOpt, SetOpt, dry_run_exit, load_config, user_errors

EPHEMERAL_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

if TYPE_CHECKING:
    from sdm.demo_examples import DemoExamples

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
    # Prefect gives its in-process API server 20 s to start: a busy laptop or CI runner needs more.
    os.environ.setdefault(EPHEMERAL_TIMEOUT_ENV, "120")
    cfg = load_config(preset, set_, params)
    dry_run_exit(cfg, dry_run)
    from flows.tasks import check_overrides
    from sdm.demo_examples import KIND as EXAMPLES_KIND
    from sdm.output_folders import check_output_dir

    with user_errors():
        check_overrides(list(set_ or []))
        # Before any work: the run ends by (re)writing examples/, never over a folder of the user's.
        check_output_dir(EXAMPLES_DIR, EXAMPLES_KIND, flag="demo examples folder")
    from flows.retrain import retrain

    start = time.monotonic()
    with user_errors():
        result = retrain(preset=preset, overrides=list(set_ or []), promote=promote, push=push, workers=workers,
                         params_file=str(params), force=force)
    minutes = (time.monotonic() - start) / 60
    plan = result["plan"]
    from sdm.demo_examples import write_demo_examples

    with user_errors():
        examples = write_demo_examples(result["prepared"], EXAMPLES_DIR, steps=cfg.sample.steps)
    if plan["action"] == "up-to-date":
        typer.echo("")
        typer.echo(f"Pipeline finished in {minutes:.1f} min: {plan['reason']}.")
        typer.echo(f"  data version : {result['data_version']}")
        typer.echo("  (nothing trained, nothing registered; `sdm pipeline run --force` trains anyway)")
        _try_it(cfg.register.model_name, result["tracking_uri"], examples)
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
    _try_it(reg["name"], result["tracking_uri"], examples)


# Where the demo leaves label maps at the model's size and a request for the served model (gitignored).
EXAMPLES_DIR = Path("examples")
SERVE_PORT = 5001


def store_for_shell(uri: str, cwd: Path | None = None) -> str:
    """The tracking URI as a command run from ``cwd`` should spell it: a sqlite file under ``cwd`` relative.

    ``sqlite:////repo/mlflow/mlflow.db`` run from ``/repo`` -> ``sqlite:///mlflow/mlflow.db`` (what README
    prints); any other URI unchanged. sqlite URIs with three slashes are relative to the working directory.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = Path(uri[len(prefix):])
    try:
        rel = path.resolve().relative_to((cwd or Path.cwd()).resolve())
    except ValueError:
        return uri
    return prefix + rel.as_posix()


def try_it_commands(model_name: str, tracking_uri: str, examples: DemoExamples,
                    port: int = SERVE_PORT) -> dict[str, str]:
    """The commands the demo prints, each runnable as printed from the repo root.

    The ``mlflow`` CLI reads only ``MLFLOW_TRACKING_URI`` (its own default is ``./mlflow.db``, another,
    empty store), so every ``mlflow`` command carries sdm's store explicitly.
    """
    store = shlex.quote(store_for_shell(tracking_uri))
    model = f"models:/{model_name}@champion"
    return {
        "MLflow UI": f"mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000",
        "sample": f"sdm sample --model {model} --labels {examples.labels.as_posix()}/ --out samples/",
        "serve": f"MLFLOW_TRACKING_URI={store} mlflow models serve -m {model} --env-manager local "
                 f"--host 127.0.0.1 --port {port}",
        "request": f"curl -s http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' "
                   f"-d @{examples.request.as_posix()}",
    }


def _try_it(model_name: str, tracking_uri: str, examples: DemoExamples) -> None:
    h, w = examples.image_size
    typer.echo(f"Try it ({examples.count} label maps at the model's {h}x{w} in {examples.labels.as_posix()}/, "
               f"a request in {examples.request.as_posix()}):")
    for what, command in try_it_commands(model_name, tracking_uri, examples).items():
        typer.echo(f"  {what:<12} : {command}")
    typer.echo("  (serve blocks: run the request from a second terminal)")


@app.command("serve")
def serve(
    prefect_yaml: Path = typer.Option(Path("prefect.yaml"), "--prefect-yaml", help="Where the deployment is."),
    name: str = typer.Option("retrain-nightly", "--name", help="The deployment to serve."),
) -> None:
    """Serve `retrain` on the schedule of prefect.yaml's deployment (needs PREFECT_API_URL of a Prefect server)."""
    from flows.retrain import serve as serve_flow

    with user_errors():
        serve_flow(prefect_yaml, name)
