"""DDIM sampling (Song et al., eq. 12) on a respaced process; eta = 0 is deterministic."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion


def ddim_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    process: GaussianDiffusion,
    x: Tensor,
    *,
    draw_noise: Callable[[], Tensor],
    indices: Iterable[int],
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """Denoise x_T [N, 3, H, W]; eta in [0, 1] scales the injected noise (1 ~ DDPM's posterior variance)."""
    n = x.shape[0]
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=x.device)
        out = process.p_mean_variance(denoise(x, process.model_timesteps(t)), x, t, clip_denoised=clip_denoised)
        x_start = out["pred_x_start"]
        # eps re-derived from the (clipped) x_0 keeps the update consistent with it.
        eps = process.predict_eps_from_x_start(x, t, x_start)
        abar = float(process.alphas_cumprod[i])
        abar_prev = float(process.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = x_start * math.sqrt(abar_prev) + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if i > 0 and sigma > 0:
            x = x + sigma * draw_noise()
    return x
