"""``sdm sample``: label PNGs in, one sampled image per label map + a grid out.

    sdm sample --checkpoint DIR | --model models:/NAME@ALIAS --labels FILE_OR_DIR --out DIR [--guidance 1.5]
               [--sampler ddpm|ddim|dpmpp|dpmpp-sde] [--steps N] [--seed S] [--batch-size B]
               [--instances FILE_OR_DIR]

The model and diffusion settings come from the checkpoint's config.json; the
sampling defaults (guidance, sampler, steps, seed, batch size, eta) from the
``sample`` section of params.yaml / --preset / --set, then the options here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from sdm.cli.common import (
    SAMPLER_CHOICES,
    DryRunOpt,
    ParamsOpt,
    PresetOpt,
    SetOpt,
    dry_run_exit,
    flag_overrides,
    load_config,
    user_errors,
)
from sdm.cli.model_source import MODEL_HELP, checkpoint_source
from sdm.config import Config, write_resolved
from sdm.errors import InputError


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


def _move_into_place(tmp: Path, out: Path) -> None:
    """A new ``out`` is the temp dir renamed; into an existing one each file is renamed over its old copy."""
    if not out.exists():
        tmp.rename(out)
        return
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)
    tmp.rmdir()


def sample(
    labels: Annotated[Path, typer.Option("--labels", help="A label PNG or a directory of them: single-channel "
                                         "class indices 0..num_classes-1 at the model's size.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory: <label name>.png per label map, grid.png "
                                      "(coloured label | sample), config.yaml.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Checkpoint directory (model.safetensors + "
                                                    "config.json), e.g. runs/<run>/final.")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale s "
                                                   "(1 = conditional only; default sample.guidance_scale).")] = None,
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
    eta: Annotated[float | None, typer.Option("--eta", help="DDIM noise (0 = deterministic; default "
                                              "sample.eta).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA weights when present.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    dry_run: DryRunOpt = False,
) -> None:
    """Sample one image per label map with classifier-free guidance."""
    # The flags resolve with params.yaml, but only this config's sample section is used: the model and
    # diffusion settings are the checkpoint's own.
    run_cfg = load_config(preset, set_, params, flag_overrides(
        "sample", guidance_scale=guidance, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, eta=eta))
    # --model downloads the registered version's checkpoint; from here on both are the same code path.
    with user_errors(), checkpoint_source(checkpoint, model, run_cfg) as checkpoint:
        from sdm.model import read_checkpoint_config

        cfg = replace(read_checkpoint_config(checkpoint), sample=run_cfg.sample)
        if cfg.sample.steps > cfg.diffusion.steps:
            raise InputError(f"--steps {cfg.sample.steps}: the checkpoint's diffusion has {cfg.diffusion.steps} "
                             f"steps; sample with 1..{cfg.diffusion.steps}")
        dry_run_exit(cfg, dry_run)
        _run(checkpoint, labels, instances, out, cfg, resolve_device(device), ema, progress)


def _run(checkpoint: Path, labels: Path, instances: Path | None, out: Path, cfg: Config, device: str,
         ema: bool, progress: bool) -> None:
    from sdm.cli.sample_inputs import read_label_inputs
    from sdm.model import load_checkpoint
    from sdm.sampling import SampleInputError, generate
    from sdm.viz import colorize, default_palette, save_grid, save_png

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    inputs = read_label_inputs(labels, instances, cfg.model)
    model, _ = load_checkpoint(checkpoint, use_ema=ema, device=device)
    s = cfg.sample
    start = time.perf_counter()
    try:
        images = generate(model, cfg, inputs.labels, inputs.instances, guidance_scale=s.guidance_scale,
                          sampler=s.sampler, steps=s.steps, seed=s.seed, batch_size=s.batch_size, eta=s.eta,
                          progress=progress)
    except SampleInputError as e:
        # The library's message numbers the label maps; the labels path says which input they came from.
        raise InputError(f"{labels}: {e}") from None
    seconds = time.perf_counter() - start
    palette = checkpoint_palette(checkpoint, cfg.model.num_classes) or default_palette(cfg.model.num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = []
        for path, label, image in zip(inputs.paths, inputs.labels, images, strict=True):
            save_png(image, tmp / f"{path.stem}.png")
            rows.append([colorize(label, palette), image])
        save_grid(rows, tmp / "grid.png")
        write_resolved(cfg, tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    typer.echo(f"wrote {len(images)} samples, grid.png and config.yaml to {out} ({s.sampler}, {s.steps} steps, "
               f"guidance {s.guidance_scale:g}, seed {s.seed}; {seconds:.1f} s on {device})")
