"""SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5 / appendix): the stochastic twin of ``dpmpp``.

Same lambda = log(alpha / sigma), h = lambda_next - lambda_cur and (clipped) x_0
prediction D as DPM-Solver++(2M), but each step solves the reverse SDE and
injects fresh noise:
    x_next = (sigma_next / sigma_cur) exp(-h) x + alpha_next (1 - exp(-2h)) D'
             + sigma_next sqrt(1 - exp(-2h)) z
with D' = D on the first and the last step and D' = D + (D - D_prev) / (2r),
r = h_prev / h, in between (the "midpoint" form of the reference code). Its
first-order step is exactly DDIM with eta = 1 (DDPM's posterior with the fixed
variance). Why it exists: the injected noise corrects the model's errors
along the way, as ancestral DDPM does, so an imperfect (e.g. briefly trained)
model keeps DDPM-1000's semantic consistency at 25 steps, where the
deterministic ODE solvers lose some (benchmarks/RESULTS.md, steps sweep).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion


def dpmpp_2m_sde_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    process: GaussianDiffusion,
    x: Tensor,
    *,
    draw_noise: Callable[[], Tensor],
    indices: Iterable[int],
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """Denoise x_T [N, 3, H, W] through the process indices (descending); stochastic (eta unused)."""
    n = x.shape[0]
    abar = process.alphas_cumprod.tolist()
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1 - a) for a in abar]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    d_prev: Tensor | None = None
    h_prev = 0.0
    for i in indices:
        t = torch.full((n,), i, dtype=torch.long, device=x.device)
        eps, _ = process.split_output(denoise(x, process.model_timesteps(t)))
        d = (x - sigma[i] * eps) / alpha[i]
        if clip_denoised:
            d = d.clamp(-1, 1)
        if i == 0:
            return d
        j = i - 1
        h = lam[j] - lam[i]
        d_hat = d if d_prev is None or j == 0 else d + (d - d_prev) / (2 * (h_prev / h))
        # -expm1(-2h) = 1 - exp(-2h), accurate for the short steps of a fine grid.
        keep = -math.expm1(-2 * h)
        x = (sigma[j] / sigma[i]) * math.exp(-h) * x + alpha[j] * keep * d_hat
        x = x + sigma[j] * math.sqrt(keep) * draw_noise()
        d_prev, h_prev = d, h
    return x
