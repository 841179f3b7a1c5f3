"""Ancestral DDPM sampling on a (respaced) process: x_{t-1} ~ p(x_{t-1} | x_t)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion


def ddpm_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    process: GaussianDiffusion,
    x: Tensor,
    *,
    draw_noise: Callable[[], Tensor],
    indices: Iterable[int],
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """Denoise x_T [N, 3, H, W] through the process indices (descending) with the learned variance.

    ``denoise(x_t, t_original)`` returns the (guided) model output; ``eta`` is unused.
    """
    n = x.shape[0]
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=x.device)
        out = process.p_mean_variance(denoise(x, process.model_timesteps(t)), x, t, clip_denoised=clip_denoised)
        x = out["mean"]
        if i > 0:  # no noise on the last step
            x = x + torch.exp(0.5 * out["log_variance"]) * draw_noise()
    return x
