"""``sample_loop``: guided sampling of a batch of label maps with any sampler, seeded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from sdm.diffusion.denoiser import GuidedDenoiser
from sdm.diffusion.gaussian import GaussianDiffusion
from sdm.diffusion.samplers import SAMPLERS

Generators = torch.Generator | Sequence[torch.Generator] | None


def draw_normal(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` [N, ...] float32 on ``device``.

    With a sequence of N generators each row comes from its own generator, so a
    sample's noise does not depend on which batch it is in. Noise is drawn on
    the generator's device (CPU by default) and moved, so results match across devices.
    """
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator]
    return torch.stack(rows)


def _progress(indices: list[int], enabled: bool, desc: str) -> Iterator[int]:
    if not enabled:
        return iter(indices)
    from tqdm.auto import tqdm

    return iter(tqdm(indices, desc=desc, unit="step"))


def sample_loop(
    model: Any,
    diffusion: GaussianDiffusion,
    segmap: Tensor,
    *,
    sampler: str = "dpmpp",
    steps: int = 25,
    guidance_scale: float = 1.5,
    eta: float = 0.0,
    generator: Generators = None,
    noise: Tensor | None = None,
    progress: bool = False,
    batched_cfg: bool = True,
    use_spade_cache: bool = True,
    clip_denoised: bool = True,
    channels: int = 3,
) -> Tensor:
    """Sample images for label maps with classifier-free guidance.

    model: ``model(x_t, t, segmap, spade_cache=None) -> [N, 6|3, H, W]`` (and
    ``model.spade_cache(segmap)`` when use_spade_cache), on segmap's device.
    diffusion: the training process (T steps); it is respaced to ``steps``.
    segmap: [N, C, H, W] float, the conditioning (one-hot + edges), on the model's device; its dtype
    is the sampling dtype (float32; float64 with a float64 model).
    generator: one torch.Generator, or one per sample (noise per row), or None (global RNG).
    noise: x_T [N, channels, H, W] to start from (overrides drawing it).
    batched_cfg / use_spade_cache: the exact speed-ups (see ``GuidedDenoiser``);
    both False is the official two-pass, uncached path.
    Returns x_0 [N, channels, H, W] in segmap's dtype, in [-1, 1] when clip_denoised.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if segmap.ndim != 4:
        raise ValueError(f"segmap must be [N, C, H, W], got shape {tuple(segmap.shape)}")
    process = diffusion.respace(steps)
    device = segmap.device
    # Sampling runs in the segmap's float dtype (float32 normally; float64 for exactness checks).
    dtype = segmap.dtype if segmap.dtype.is_floating_point else torch.float32
    n, _, h, w = segmap.shape
    shape = (n, channels, h, w)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(device=device, dtype=dtype)
    else:
        x = draw_normal(shape, generator, device).to(dtype)

    def draw_noise() -> Tensor:
        return draw_normal(shape, generator, device).to(dtype)

    sample_fn: Callable[..., Tensor] = SAMPLERS[sampler]
    indices = list(range(process.num_timesteps))[::-1]
    with torch.no_grad():
        denoiser = GuidedDenoiser(
            model, segmap, guidance_scale, batched_cfg=batched_cfg, use_spade_cache=use_spade_cache
        )
        return sample_fn(
            denoiser,
            process,
            x,
            draw_noise=draw_noise,
            indices=_progress(indices, progress, f"{sampler} s={guidance_scale:g}"),
            clip_denoised=clip_denoised,
            eta=eta,
        )
