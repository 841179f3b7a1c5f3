"""``sdm evaluate``: guided sampling of a split, scored (mIoU, FSD, diversity, FID), and the evaluation segmenter.

    sdm evaluate --checkpoint DIR --data DIR --out DIR [--guidance 1.0,1.5,2.0] ...
    sdm evaluate train-segmenter --data DIR
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import (
    SAMPLER_CHOICES,
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    checkpoint_dir,
    dry_run_exit,
    flag_overrides,
    given_keys,
    load_config,
    user_errors,
)
from sdm.errors import InputError

app = typer.Typer(
    help="Evaluate a checkpoint with classifier-free guidance (mIoU, FSD, feature diversity, FID, sweeps).",
    invoke_without_command=True,
)

DataOpt = Annotated[Path | None, typer.Option("--data", help="Prepared data directory (default: data.prepared).")]


@app.callback()
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint directory (EMA weights "
                                                     "when present).")] = None,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (replaced atomically).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default evaluate.split).")] = None,
    guidance: Annotated[str | None, typer.Option("--guidance", help="Guidance scale(s), e.g. 1.5 or "
                                                 "1.0,1.5,2.0.")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help=f"One of {SAMPLER_CHOICES}.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps.")] = None,
    eta: Annotated[float | None, typer.Option("--eta", help="Noise of ddim / distilled (0 = deterministic; "
                                              "default evaluate.eta, a distilled student's own).")] = None,
    num_samples: Annotated[int | None, typer.Option("--num-samples", help="Label maps to use (0 = the whole "
                                                    "split).")] = None,
    repeats: Annotated[int | None, typer.Option("--repeats", help="Samples per label map (diversity needs "
                                                ">= 2).")] = None,
    steps_sweep: Annotated[str | None, typer.Option("--steps-sweep", help="Also sweep sampler:steps pairs, "
                                                    "e.g. ddpm:1000,ddim:50,dpmpp:25; 'config' = "
                                                    "evaluate.steps_sweep.")] = None,
    segmenter: Annotated[str | None, typer.Option("--segmenter", help="Segmenter directory or TorchScript file "
                                                  "(default: the cached one for the data).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Sampling batch size.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    workers: Annotated[int | None, typer.Option("--workers", help="Spread the sampling over N Ray workers "
                                                "(RAY_ADDRESS's cluster, else a local one); 1 = in this process "
                                                "(default evaluate.workers). Same images and metrics.")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--no-gpu", help="One GPU per Ray sampling worker (default "
                                             "evaluate.use_gpu).")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")] = True,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log to the checkpoint's MLflow "
                                         "run.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even when it is not an evaluation "
                                            "sdm wrote (never a run folder or an input).")] = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Sample a split with classifier-free guidance and write metrics.json, samples, grids, tables and plots."""
    if ctx.invoked_subcommand is not None:
        return
    from sdm.eval.sweep import pair_name, parse_pairs, parse_scales

    with user_errors():  # --guidance and --steps-sweep are lists in the config: parsed (and checked) here first
        scales = parse_scales(guidance) if guidance is not None else None
        pairs = ([pair_name(*p) for p in parse_pairs([steps_sweep])]
                 if steps_sweep not in (None, "config") else None)
    cfg = load_config(preset, set_, params, [
        *flag_overrides("evaluate", guidance_scales=scales, steps_sweep=pairs, split=split, sampler=sampler,
                        steps=steps, eta=eta, num_samples=num_samples, repeats=repeats, batch_size=batch_size,
                        workers=workers, use_gpu=gpu),
        *flag_overrides("evaluate.segmenter", path=segmenter),
    ])
    dry_run_exit(cfg, dry_run)
    from sdm.eval.runner import EvalRequest, default_device, run_evaluation

    with user_errors():
        if checkpoint is None or out is None:
            raise InputError("sdm evaluate needs --checkpoint DIR and --out DIR (see sdm evaluate --help)")
        request = EvalRequest(
            checkpoint=checkpoint_dir(checkpoint), data=data or Path(cfg.data.prepared), out=out,
            steps_sweep=steps_sweep is not None, use_ema=ema, log_mlflow=mlflow,
            device=default_device() if device == "auto" else device, overwrite=overwrite,
            sampling_given=tuple(sorted(given_keys("evaluate", set_, sampler=sampler, steps=steps, eta=eta))),
        )
        metrics = run_evaluation(request, cfg, log=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "skipped"}, indent=2))


@app.command("train-segmenter")
def train_segmenter_cmd(
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Save here instead of the cache (reused when "
                                             "present).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even when a cached one exists.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even when it is not a segmenter "
                                            "sdm wrote (never the data folder or a folder holding it).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Train the evaluation segmenter on the real train split (cached per data version) and report its val mIoU."""
    cfg = load_config(preset, set_, params)
    dry_run_exit(cfg, dry_run)
    from sdm.eval.runner import default_device
    from sdm.eval.segmenter_cache import train_and_save

    with user_errors():
        if out is not None:  # before any training: a user's folder at --out is not replaced without --overwrite
            from sdm.output_folders import SEGMENTER, check_output_dir

            check_output_dir(out, SEGMENTER, overwrite=overwrite, sources=[data or Path(cfg.data.prepared)])
        seg, directory, trained = train_and_save(
            data or Path(cfg.data.prepared), cfg, out_dir=out, force=force,
            device=default_device() if device == "auto" else device, log=lambda m: typer.echo(m, err=True),
        )
    summary = {"segmenter": str(directory), "trained_now": trained, "data_version": seg.info.get("data_version"),
               "val_miou": seg.info.get("val_miou"), "val_images": seg.info.get("val_images")}
    typer.echo(json.dumps(summary, indent=2))
