"""``sdm sample``: label PNGs in, one sampled image per label map + a grid out.

    sdm sample --checkpoint DIR | --model models:/NAME@ALIAS --labels FILE_OR_DIR --out DIR [--guidance 1.5]
               [--sampler ddpm|ddim|dpmpp|dpmpp-sde|renoise|distilled] [--steps N] [--seed S] [--batch-size B]
               [--instances FILE_OR_DIR] [--resize] [--crop] [--precision auto|fp32|bf16] [--compile auto|true|false]

The model and diffusion settings come from the checkpoint's config.json; the
sampling defaults (guidance, sampler, steps, seed, batch size, eta) from the
``sample`` section of params.yaml / --preset / --set, then the options here.
A distilled student (``sdm distill``) samples with its own sampler and steps
(``renoise``, K) unless --sampler / --steps (or --set sample.sampler/steps) say otherwise.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from sdm.atomic import atomic_dir
from sdm.cli.common import (
    SAMPLER_CHOICES,
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    dry_run_exit,
    flag_overrides,
    given_keys,
    load_config,
    user_errors,
)
from sdm.cli.model_source import MODEL_HELP, labeled_checkpoint_source
from sdm.config import Config, write_resolved
from sdm.errors import InputError
from sdm.output_folders import SAMPLES, check_output_dir


def one_guidance_scale(text: str | None) -> float | None:
    """``--guidance``: one scale here (``evaluate``'s ``--guidance`` takes a comma list of them)."""
    if text is None:
        return None
    if "," in text:
        raise InputError(f"--guidance {text}: sdm sample takes one guidance scale; run it once per scale, "
                         f"or compare scales with `sdm evaluate --guidance {text}`")
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--guidance {text!r}: expected a number, e.g. --guidance 1.5") from None


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return device


def checkpoint_palette(checkpoint: Path, num_classes: int) -> list[list[int]] | None:
    """The dataset palette stored in the checkpoint's meta.json, when it covers every class."""
    from sdm.model import read_checkpoint_meta

    palette = read_checkpoint_meta(checkpoint).get("palette")
    if isinstance(palette, list) and len(palette) >= num_classes:
        return palette
    return None


def sample(
    labels: Annotated[Path, typer.Option("--labels", help="A label PNG or a directory of them: single-channel "
                                         "class indices 0..num_classes-1 (mode L/P/I), or RGB label images in "
                                         "the model's palette; at the model's size unless --resize.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: <label name>.png per label map, grid.png "
                                      "(coloured label | sample), config.yaml; an earlier samples folder there "
                                      "is replaced, never merged.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint directory (model.safetensors + "
                                                    "config.json), e.g. runs/<run>/final.")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    guidance: Annotated[str | None, typer.Option("--guidance", help="ONE classifier-free guidance scale s "
                                                 "(1 = conditional only; default sample.guidance_scale); "
                                                 "`sdm evaluate --guidance 1.0,1.5` compares several.")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help=f"One of {SAMPLER_CHOICES} (default "
                                                "sample.sampler).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (default sample.steps).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed; sample i uses seed + i (default "
                                             "sample.seed).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Label maps per batch (default "
                                                   "sample.batch_size); does not change the images.")] = None,
    instances: Annotated[Path | None, typer.Option("--instances", help="Instance-id PNG(s) for the edge "
                                                   "channel, named like the label files (default: edges of "
                                                   "the label maps).")] = None,
    resize: Annotated[bool, typer.Option("--resize", help="Resize label (and instance) maps of another size "
                                         "to the model's, nearest neighbour; another aspect ratio is refused "
                                         "unless --crop.")] = False,
    crop: Annotated[bool, typer.Option("--crop", help="With another aspect ratio than the model's: keep the "
                                       "centred window of the model's aspect, then resize (implies --resize).")
                    ] = False,
    eta: Annotated[float | None, typer.Option("--eta", help="Noise of ddim / distilled (0 = deterministic; default "
                                              "sample.eta).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str | None, typer.Option("--precision", help="auto (bf16 where the device runs it "
                                                  "natively, else fp32), fp32 (exact) or bf16 (default "
                                                  "sample.precision).")] = None,
    compile_: Annotated[str | None, typer.Option("--compile", help="torch.compile the U-Net: auto, true or "
                                                 "false (default sample.compile; compiling is paid once per "
                                                 "shape, reported apart).")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out even when it is not a samples "
                                            "folder sdm wrote (never the labels' or checkpoint's folder).")] = False,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Sample one image per label map with classifier-free guidance."""
    # The flags resolve with params.yaml, but only this config's sample section is used: the model and
    # diffusion settings are the checkpoint's own.
    with user_errors():
        scale = one_guidance_scale(guidance)
    run_cfg = load_config(preset, set_, params, flag_overrides(
        "sample", guidance_scale=scale, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, eta=eta,
        precision=precision, compile=compile_))
    # --model downloads the registered version's checkpoint; from here on both are the same code path.
    with user_errors(), labeled_checkpoint_source(checkpoint, model, run_cfg) as (checkpoint, made_from):
        from sdm.distill.student import student_sampling
        from sdm.model import read_checkpoint_config

        ckpt_cfg = read_checkpoint_config(checkpoint)
        given = given_keys("sample", set_, sampler=sampler, steps=steps, eta=eta)
        cfg = replace(ckpt_cfg, sample=student_sampling(run_cfg.sample, ckpt_cfg, given))
        if cfg.sample.steps > cfg.diffusion.steps:
            raise InputError(f"--steps {cfg.sample.steps}: the checkpoint's diffusion has {cfg.diffusion.steps} "
                             f"steps; sample with 1..{cfg.diffusion.steps}")
        dry_run_exit(cfg, dry_run)
        _run(checkpoint, labels, instances, out, cfg, resolve_device(device), ema, progress,
             made_from=made_from, overwrite=overwrite, resize=resize or crop, crop=crop)


def _run(checkpoint: Path, labels: Path, instances: Path | None, out: Path, cfg: Config, device: str,
         ema: bool, progress: bool, *, made_from: str, overwrite: bool = False, resize: bool = False,
         crop: bool = False) -> None:
    """Sample, then REPLACE ``out`` with the images, grid.png, config.yaml and the marker (never merge:
    an earlier call's images must not sit beside these). ``made_from``: the checkpoint directory or the
    ``models:/NAME/VERSION`` it came from, recorded in the marker."""
    from sdm.cli.sample_inputs import MapOptions, read_label_inputs
    from sdm.model import load_checkpoint
    from sdm.sampling import SampleInputError, generate
    from sdm.viz import colorize, default_palette, save_grid, save_png

    inputs_ = [checkpoint, labels, instances]
    # A refused --out fails before any sampling; atomic_dir checks again just before the swap.
    check_output_dir(out, SAMPLES, overwrite=overwrite, sources=inputs_)
    carried_palette = checkpoint_palette(checkpoint, cfg.model.num_classes)
    inputs = read_label_inputs(labels, instances, cfg.model, MapOptions(
        resize=resize, crop=crop, palette=carried_palette, max_pixels=cfg.data.max_image_pixels))
    model, _ = load_checkpoint(checkpoint, use_ema=ema, device=device)
    s = cfg.sample
    start = time.perf_counter()
    stats: dict = {}
    try:
        images = generate(model, cfg, inputs.labels, inputs.instances, guidance_scale=s.guidance_scale,
                          sampler=s.sampler, steps=s.steps, seed=s.seed, batch_size=s.batch_size, eta=s.eta,
                          progress=progress, precision=s.precision, compile=s.compile,
                          channels_last=s.channels_last, cache_budget_gb=s.cache_budget_gb, stats=stats)
    except SampleInputError as e:
        # The library's message numbers the label maps; the labels path says which input they came from.
        raise InputError(f"{labels}: {e}") from None
    seconds = time.perf_counter() - start
    palette = carried_palette or default_palette(cfg.model.num_classes)
    with atomic_dir(out, kind=SAMPLES, overwrite=overwrite, sources=inputs_, source=made_from,
                    marker={"labels": str(labels.resolve()), "sampler": s.sampler, "steps": s.steps,
                            "guidance_scale": s.guidance_scale, "seed": s.seed}) as tmp:
        rows = []
        for path, label, image in zip(inputs.paths, inputs.labels, images, strict=True):
            save_png(image, tmp / f"{path.stem}.png")
            rows.append([colorize(label, palette), image])
        save_grid(rows, tmp / "grid.png")
        write_resolved(cfg, tmp)
    typer.echo(f"wrote {len(images)} samples, grid.png and config.yaml to {out} ({s.sampler}, {s.steps} steps, "
               f"guidance {s.guidance_scale:g}, seed {s.seed}; {seconds:.1f} s on {device})")
    compiled = f", compile {stats['compile_seconds']:.1f} s of it" if stats["compile"] else ""
    typer.echo(f"  {stats['precision']}{', compiled' if stats['compile'] else ''}"
               f"{', channels-last' if stats['channels_last'] else ''}{compiled}; {stats['plan'].describe()}; "
               f"largest cache built {stats['largest_cache_nbytes'] / 2**20:.1f} MiB")
