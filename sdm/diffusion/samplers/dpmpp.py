"""DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction, on the discrete schedule.

With lambda = log(alpha / sigma) (alpha = sqrt(abar), sigma = sqrt(1 - abar)),
h = lambda_next - lambda_cur and D the (clipped) x_0 prediction, the two forms:

- ODE (``dpmpp``, deterministic):
      x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D'
- SDE (``dpmpp-sde``, SDE-DPM-Solver++(2M), fresh noise z each step):
      x_next = (sigma_next / sigma_cur) exp(-h) x + alpha_next (1 - exp(-2h)) D'
               + sigma_next sqrt(1 - exp(-2h)) z

where D' = D on the first step (first order: DDIM with eta = 0 resp. 1) and,
afterwards, D' = D + (D - D_prev) / (2r) with r = h_prev / h. The step into the
last timestep (original t = 0) is first order too: on a grid uniform in t the
lambda step there is long (r small), where the 2M extrapolation overshoots
(the "lower order final" of DPM-Solver's reference code). The model's x_0
prediction at t = 0 is the result, as in DDIM's last step.

Why both: the SDE's injected noise corrects the model's errors along the way,
as ancestral DDPM does, so an imperfect (e.g. briefly trained) model keeps
DDPM-1000's semantic consistency at 25 steps, where the ODE loses some
(benchmarks/RESULTS.md, steps sweep); the ODE's images depend on x_T alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion


def _dpmpp_2m(sde: bool, name: str, doc: str) -> Callable[..., Tensor]:
    """The sampler function of one form (the two differ only in the update)."""

    def sample(
        denoise: Callable[[Tensor, Tensor], Tensor],
        process: GaussianDiffusion,
        x: Tensor,
        *,
        draw_noise: Callable[[], Tensor],
        indices: Iterable[int],
        clip_denoised: bool = True,
        eta: float = 0.0,
    ) -> Tensor:
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
            if sde:
                keep = -math.expm1(-2 * h)  # 1 - exp(-2h), accurate for the short steps of a fine grid
                x = (sigma[j] / sigma[i]) * math.exp(-h) * x + alpha[j] * keep * d_hat
                x = x + sigma[j] * math.sqrt(keep) * draw_noise()
            else:
                x = (sigma[j] / sigma[i]) * x - alpha[j] * math.expm1(-h) * d_hat
            d_prev, h_prev = d, h
        return x

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = doc
    return sample


dpmpp_2m_sample = _dpmpp_2m(
    False, "dpmpp_2m_sample",
    "Denoise x_T [N, 3, H, W] through the process indices (descending); deterministic (no noise, eta unused)."
)
dpmpp_2m_sde_sample = _dpmpp_2m(
    True, "dpmpp_2m_sde_sample",
    "Denoise x_T [N, 3, H, W] through the process indices (descending); fresh noise each step (eta unused)."
)
