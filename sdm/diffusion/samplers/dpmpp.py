"""DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction, on the discrete schedule.

With lambda = log(alpha / sigma) (alpha = sqrt(abar), sigma = sqrt(1 - abar)),
h = lambda_next - lambda_cur and D the (clipped) x_0 prediction:
    x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D'
where D' = D on the first step (first order, = DDIM) and, afterwards,
D' = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h. The step into the
last timestep (original t = 0) is first order too: on a grid uniform in t the
lambda step there is long (r small), where the 2M extrapolation overshoots
(the "lower order final" of DPM-Solver's reference code). The model's x_0
prediction at t = 0 is the result, as in DDIM's last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion


def dpmpp_2m_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    process: GaussianDiffusion,
    x: Tensor,
    *,
    draw_noise: Callable[[], Tensor],
    indices: Iterable[int],
    clip_denoised: bool = True,
    eta: float = 0.0,
) -> Tensor:
    """Denoise x_T [N, 3, H, W] through the process indices (descending); deterministic (no noise, eta unused)."""
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
        if d_prev is None or j == 0:
            d_hat = d
        else:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        x = (sigma[j] / sigma[i]) * x - alpha[j] * math.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return x
