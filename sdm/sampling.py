"""``generate``: label maps in, uint8 images out. The one sampling entry point.

Used by ``sdm sample``, evaluation, the training sample grids and the MLflow
pyfunc model, so every one of them validates, conditions, seeds and converts
the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdm.compiled import COMPILE_LOG, compiled, resolve_setting
from sdm.compiled import channels_last as channels_last_ctx
from sdm.conditioning import make_segmap
from sdm.config.schema import Config
from sdm.diffusion import GaussianDiffusion, sample_loop
from sdm.errors import InputError
from sdm.precision import compute_dtype, resolve_precision
from sdm.spade_budget import cache_bytes_per_label_map, plan_cache


class SampleInputError(InputError):
    """Label or instance maps that cannot be sampled from; the message names the map, the value and the expectation."""


def _as_long(maps: Any, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise SampleInputError(f"{what} must hold integers, got dtype {tensor.dtype}")
    if tensor.ndim != 3:
        raise SampleInputError(f"{what} must be [N, H, W], got shape {list(tensor.shape)}")
    return tensor.long()


def validate_labels(labels: Any, config: Config, instances: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check label maps [N, H, W] (and instance maps) against the model config; return them as long tensors.

    Errors name the offending map's index, the value found and what was expected.
    """
    label_t = _as_long(labels, "labels")
    size = list(config.model.image_size)
    if list(label_t.shape[1:]) != size:
        raise SampleInputError(f"label maps are {label_t.shape[1]}x{label_t.shape[2]} (HxW) but the model "
                               f"expects {size[0]}x{size[1]} (model.image_size)")
    num_classes = config.model.num_classes
    if label_t.numel():
        per_map_max = label_t.flatten(1).amax(dim=1)
        per_map_min = label_t.flatten(1).amin(dim=1)
        bad = torch.nonzero((per_map_max >= num_classes) | (per_map_min < 0)).flatten()
        if len(bad):
            i = int(bad[0])
            found = int(per_map_max[i]) if per_map_max[i] >= num_classes else int(per_map_min[i])
            raise SampleInputError(f"label map {i} has value {found}; the model has {num_classes} classes, "
                                   f"so labels must be in 0..{num_classes - 1}")
    instance_t = None
    if instances is not None:
        instance_t = _as_long(instances, "instances")
        if instance_t.shape != label_t.shape:
            raise SampleInputError(f"instance maps have shape {list(instance_t.shape)} but the label maps "
                                   f"{list(label_t.shape)}")
    return label_t, instance_t


def check_sampling(config: Config, sampler: str, guidance_scale: float) -> None:
    """Refuse (``InputError`` naming the checkpoint setting) what a model's config cannot sample.

    ``distilled`` only for a guidance-distilled student (``model.guidance_embed``); a student only at guidance
    scales inside the range it was distilled for (``distill.guidance_range``), whatever the sampler.
    """
    if sampler == "distilled" and not config.model.guidance_embed:
        raise InputError("sampler 'distilled' is a distilled student's own (model.guidance_embed true in its "
                         "config.json, written by `sdm distill`); this checkpoint has model.guidance_embed false: "
                         "sample it with ddpm, ddim, dpmpp or dpmpp-sde")
    if config.model.guidance_embed:
        lo, hi = (float(w) for w in config.distill.guidance_range)
        if not lo <= float(guidance_scale) <= hi:
            raise InputError(f"guidance scale {float(guidance_scale):g} is outside the range this student was "
                             f"distilled for: distill.guidance_range [{lo:g}, {hi:g}] in its config.json; "
                             f"sample at a scale in [{lo:g}, {hi:g}]")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] float in [-1, 1] -> uint8 [N, H, W, 3] (values outside are clipped)."""
    scaled = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).contiguous().numpy()


def generate(
    model: Any,
    config: Config,
    labels: np.ndarray | torch.Tensor,
    instances: np.ndarray | torch.Tensor | None = None,
    *,
    guidance_scale: float,
    sampler: str,
    steps: int,
    seed: int,
    batch_size: int = 8,
    eta: float = 0.0,
    progress: bool = False,
    precision: str = "fp32",
    compile: bool | str = False,
    channels_last: bool | str = False,
    cache_budget_gb: float = 0.0,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Sample one image per label map: labels [N, H, W] int in 0..num_classes-1 -> uint8 [N, H, W, 3].

    Sample i starts from noise of its own generator seeded ``seed + i``, so the
    images do not depend on ``batch_size`` (up to the CPU's conv rounding: AVX-512
    kernels round by batch size, a uint8 step at a few pixels). ``instances`` [N, H, W] (any integer
    ids) give instance edges when the model uses them; without them the edges
    come from the label map itself.

    Speed (``sample.*`` in params.yaml; the defaults here are the exact fp32 eager path):
    ``precision`` fp32 | bf16 | auto (``sdm.precision``); ``compile`` / ``channels_last`` False | True |
    "auto" (``sdm.compiled``); ``cache_budget_gb`` bounds the SPADE cache per sampling call, 0 = unbounded
    (``sdm.spade_budget``: smaller chunks of label maps, or uncached past it). ``stats``, when given, is
    filled with what ran: the resolved settings, the cache plan, the largest cache built and compile time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_sampling(config, sampler, guidance_scale)
    label_t, instance_t = validate_labels(labels, config, instances)
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    precision = resolve_precision(precision, device)
    use_compile = resolve_setting(compile, "compile", device)
    use_channels_last = resolve_setting(channels_last, "channels_last", device)
    element_size = torch.finfo(compute_dtype(precision, device)).bits // 8
    # A student takes the scale as input: one label map per row, no null branch to cache.
    guided = guidance_scale != 1.0 and not config.model.guidance_embed
    plan = plan_cache(batch_size, cache_bytes_per_label_map(model, config.model.image_size, element_size, guided),
                      cache_budget_gb)
    net = compiled(model) if use_compile else model
    diffusion = GaussianDiffusion(config.diffusion, config.model.learn_sigma)
    largest_cache = 0
    compiles_before = _compile_count()
    out = []
    with channels_last_ctx(model, use_channels_last):
        for start in range(0, label_t.shape[0], plan.chunk):
            stop = min(start + plan.chunk, label_t.shape[0])
            inst = instance_t[start:stop] if instance_t is not None else None
            segmap = make_segmap(label_t[start:stop], inst, config.model).to(device)
            generators = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
            call: dict[str, Any] = {}
            images = sample_loop(
                net, diffusion, segmap, sampler=sampler, steps=steps, guidance_scale=guidance_scale, eta=eta,
                generator=generators, progress=progress, channels=config.model.in_channels,
                use_spade_cache=plan.use_cache, precision=precision, stats=call,
            )
            largest_cache = max(largest_cache, call["cache_nbytes"])
            out.append(to_uint8(images))
    if stats is not None:
        stats.update(precision=precision, compile=use_compile, channels_last=use_channels_last, plan=plan,
                     chunk=plan.chunk, use_spade_cache=plan.use_cache, largest_cache_nbytes=largest_cache,
                     cache_bytes_per_label_map=plan.bytes_per_label_map,
                     compile_seconds=_compile_seconds(compiles_before))
    h, w = config.model.image_size
    return np.concatenate(out) if out else np.zeros((0, h, w, 3), dtype=np.uint8)


def _compile_count() -> int:
    return len(COMPILE_LOG)


def _compile_seconds(since: int) -> float:
    """Seconds spent compiling (first calls of new shapes) since the log had ``since`` entries."""
    return float(sum(entry["seconds"] for entry in COMPILE_LOG[since:]))
