"""The ``sdm`` command line. Each command group lives in its own module."""

from __future__ import annotations

import typer

from sdm.env import apply_quiet_offline_env

apply_quiet_offline_env()

from sdm.cli import (  # noqa: E402
    config_cmd,
    convert_cmd,
    data_cmd,
    distill_cmd,
    doctor_cmd,
    evaluate_cmd,
    pipeline_cmd,
    register_cmd,
    reproduce_cmd,
    sample_cmd,
    train_cmd,
)

app = typer.Typer(
    help="sdm: train, evaluate, version and ship semantic image synthesis diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(evaluate_cmd.app, name="evaluate")
app.add_typer(pipeline_cmd.app, name="pipeline")
app.command("convert-official")(convert_cmd.convert_official)
app.command("distill")(distill_cmd.distill)
app.command("doctor")(doctor_cmd.doctor)
app.command("register")(register_cmd.register)
app.command("reproduce")(reproduce_cmd.reproduce)
app.command("sample")(sample_cmd.sample)
app.command("train")(train_cmd.train)


def main() -> None:
    app()
