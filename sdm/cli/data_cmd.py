"""``sdm data``: synthesize, validate, prepare and version datasets.

Flags are overrides of ``config.data`` (they go through the same validation as
``--set``), so ``sdm data prepare`` alone prepares the configured dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from sdm.cli.common import (
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    dry_run_exit,
    flag_overrides,
    load_config,
    user_errors,
)
from sdm.config import Config, to_dict
from sdm.errors import InputError

app = typer.Typer(help="Datasets: synthesize the toy scenes, validate, prepare to Parquet shards, version with DVC.",
                  no_args_is_help=True)

FormatOpt = Annotated[
    str | None, typer.Option("--format", help="folder, ade20k, cityscapes, celebamask-hq, coco-stuff.")
]
SourceOpt = Annotated[Path | None, typer.Option("--source", help="The raw dataset folder.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace --out even when it is not a folder sdm wrote for this command (never the "
                        "source folder or a folder holding it).")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Threads for decoding/encoding (default: all cores).")
]


def parse_size(text: str) -> list[int]:
    """"256" -> [256, 256]; "256x512" -> [H, W] = [256, 512]."""
    parts = text.lower().split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--size {text!r}: expected S or HxW, e.g. 256 or 256x512") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 8:
        raise InputError(f"--size {text!r}: expected S or HxW with sides >= 8")
    return size


def _data_yaml(cfg: Config) -> str:
    # Only the data section: it is all that shapes the output, so model or
    # training settings do not change the prepared data's hash (its version).
    body = yaml.safe_dump({"data": to_dict(cfg.data)}, sort_keys=False)
    return "# The data section of the resolved config that made this folder.\n" + body


@app.command("synth")
def synth(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: data.source).")] = None,
    n: Annotated[int | None, typer.Option("--n", help="Number of scenes (data.synth.n).")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Side in pixels (data.synth.size).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (data.synth.seed).")] = None,
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Write the built-in synthetic scenes (12 classes, instance maps) in the folder format."""
    cfg = load_config(preset, set_, params, flag_overrides("data.synth", n=n, size=size, seed=seed))
    dry_run_exit(cfg, dry_run)
    from sdm.data.synthetic import synthesize

    target = out or Path(cfg.data.source)
    s = cfg.data.synth
    with user_errors():
        synthesize(target, s.n, s.size, s.seed, workers=workers, progress=True, overwrite=overwrite)
    typer.echo(f"wrote {s.n} scenes of {s.size}x{s.size} px (seed {s.seed}) to {target}")


@app.command("validate")
def validate(
    format_: FormatOpt = None,
    source: SourceOpt = None,
    workers: WorkersOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check a raw dataset and print the report (exit code 1 when there are problems)."""
    cfg = load_config(preset, set_, params, flag_overrides("data", format=format_, source=source))
    from sdm.data.validate import validate as run_validate

    with user_errors():
        report = run_validate(cfg.data.format, cfg.data.source, workers=workers, progress=True,
                              max_image_pixels=cfg.data.max_image_pixels)
    typer.echo(str(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("prepare")
def prepare(
    format_: FormatOpt = None,
    source: SourceOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: data.prepared).")] = None,
    size: Annotated[str | None, typer.Option("--size", help="S or HxW (default: data.image_size).")] = None,
    on_error: Annotated[str | None, typer.Option("--on-error", help="fail (write nothing) or skip (leave out, list "
                                                                    "in the manifest).")] = None,
    workers: WorkersOpt = None,
    ray: Annotated[bool | None, typer.Option("--ray/--no-ray", help="Decode/check/resize on Ray tasks (the "
                                             "RAY_ADDRESS cluster, else a local one); default: when RAY_ADDRESS "
                                             "is set. Same shards byte for byte.")] = None,
    overwrite: OverwriteOpt = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Check, resize and write a dataset as Parquet shards + manifest.json (+ config.yaml)."""
    import os

    hw = None
    if size is not None:
        with user_errors():
            hw = parse_size(size)
    # --size sets both sizes: the model is built for the data it is prepared at.
    cfg = load_config(preset, set_, params, [
        *flag_overrides("data", format=format_, source=source, prepared=out, on_error=on_error, image_size=hw),
        *flag_overrides("model", image_size=hw),
    ])
    dry_run_exit(cfg, dry_run)
    from sdm.data.prepare import prepare as run_prepare

    d = cfg.data
    with user_errors():
        manifest = run_prepare(d.format, d.source, d.prepared, d.image_size, val_fraction=d.val_fraction,
                               split_seed=d.split_seed, on_error=d.on_error, shard_mb=d.shard_mb, workers=workers,
                               progress=True, extra_files={"config.yaml": _data_yaml(cfg)}, overwrite=overwrite,
                               max_image_pixels=d.max_image_pixels,
                               ray=bool(os.environ.get("RAY_ADDRESS", "").strip()) if ray is None else ray)
    counts = ", ".join(f"{s}: {n}" for s, n in manifest.counts.items())
    typer.echo(f"prepared {d.format} from {d.source} at {d.image_size[0]}x{d.image_size[1]} into {d.prepared} "
               f"({counts}; {len(manifest.shards)} shard(s))")
    if manifest.skipped:
        typer.echo(f"left out {len(manifest.skipped)} example(s) with problems (listed in manifest.json 'skipped')")


@app.command("version")
def version(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Run stage prepare-<D> (default: the 'prepare' stage of params.yaml's dataset)."
    )] = None,
    push: Annotated[bool, typer.Option("--push/--no-push", help="dvc push the prepared data.")] = True,
) -> None:
    """dvc repro the prepare stage, dvc push it, and print the data version (hash@commit)."""
    from sdm.data.version import DataVersionError, find_dvc_root, repro_and_push

    with user_errors():
        root = find_dvc_root(Path.cwd())
        if root is None:
            raise InputError(f"{Path.cwd()} is not inside a DVC project (no .dvc folder); run `dvc init` first")
        stage = "prepare" if dataset in (None, "", "synthetic") else f"prepare-{dataset}"
        try:
            info = repro_and_push(stage, root, push=push)
        except DataVersionError as e:  # a failed DVC/git step, not bad input: exit 1, as a failed training run
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"data version: {info['version']}")
    counts = ", ".join(f"{s}: {n}" for s, n in info["counts"].items())
    typer.echo(f"  stage {info['stage']}, {info['format']}, {counts}")
    if info.get("lock_uncommitted"):
        typer.echo("  dvc.lock changed: commit it to record this version (git add dvc.lock && git commit)")



@app.command("checkout")
def checkout(
    version: Annotated[str, typer.Argument(help="A data version (dvc:<md5>@<commit>, as lineage.data_version "
                                                "records; or an md5), or models:/NAME/VERSION | models:/NAME@ALIAS "
                                                "(the data that version trained on).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to restore the prepared data into.")],
    overwrite: OverwriteOpt = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Restore prepared data from the project's DVC remote by its content hash, whether or not a commit names it."""
    import tempfile

    from sdm.data.version import DataVersionError
    from sdm.reproduce.checkout import DataCheckoutError, checkout_data

    cfg = load_config(None, None, params)
    with user_errors():
        entry = None
        if version.startswith("models:/"):
            from sdm.reproduce.version import version_record

            with tempfile.TemporaryDirectory(prefix="sdm-checkout-") as tmp:
                rec = version_record(version, tmp, cfg, flag="VERSION")
            data = rec.record["data"]
            if not data.get("dvc_tracked"):
                raise DataCheckoutError(f"VERSION {version}: its training data was not DVC-tracked: "
                                        f"{data.get('reason', data.get('data_version'))}")
            entry = data
        try:
            from sdm.data.version import find_dvc_root

            # The project here, else (a models:/ version) the one that trained it, while it exists.
            root = find_dvc_root(Path.cwd()) or (Path(entry["dvc_root"]) if entry and entry.get("dvc_root")
                                                  and Path(entry["dvc_root"]).is_dir() else None)
            result = checkout_data(version, out, root=root, entry=entry, overwrite=overwrite,
                                   timeout_s=cfg.data.dvc_timeout_s, log=typer.echo)
        except DataVersionError as e:  # DVC failed for another reason (an outage): exit 1, like `data version`
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"checked out {result.md5} ({result.files} files, verified) into {out}")
