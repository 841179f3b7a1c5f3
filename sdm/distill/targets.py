"""The formulas of guided distillation, as pure functions of tensors (no networks, no state).

Notation (Salimans & Ho 2022): at an original timestep t of the T-step process, alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t) and z_t = alpha_t x + sigma_t eps. "x_0" (the end of sampling) is written as
timestep -1 with abar = 1 (alpha 1, sigma 0). Per-sample coefficients are [N] tensors, broadcast over the
[N, C, H, W] images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdm.errors import InputError

# The timestep that stands for x_0 (abar = 1) in the stage-two tables.
X0 = -1


def grid(n: int, num_timesteps: int = 1000) -> list[int]:
    """The distilled sampler's n timesteps round((j + 1) * T / n) - 1, j = 0..n-1 (ascending).

    T = 1000, n = 8: [124, 249, 374, 499, 624, 749, 874, 999]. grid(n) is a subset of grid(2n) (its odd
    entries: grid(2n)[2j + 1] == grid(n)[j]), so each student step spans exactly two teacher steps, and the
    last sampling step goes from grid(n)[0] to x_0. ``round`` is Python's (ties to even), deterministic.
    """
    if not 1 <= n <= num_timesteps:
        raise InputError(f"the distilled grid needs 1..{num_timesteps} steps (diffusion.steps), got {n}")
    return [round((j + 1) * num_timesteps / n) - 1 for j in range(n)]


def abar_at(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """abar at original timesteps [N] long (X0 = -1 gives 1.0): float64 [N] on timesteps' device.

    alphas_cumprod: [T] float64, the training process's table.
    """
    table = torch.cat([alphas_cumprod.to(torch.float64), torch.ones(1, dtype=torch.float64)])
    # X0 = -1 indexes the appended 1.0.
    return table.to(timesteps.device)[timesteps.long()]


def _b(coef: Tensor, like: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, ...] in like's dtype and device."""
    return coef.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def guided_target(out_cond: Tensor, out_uncond: Tensor, guidance_scale: Tensor, eps_channels: int = 3) -> Tensor:
    """Classifier-free guidance with one scale per sample: the stage-one target.

    out_cond / out_uncond: model outputs [N, 6|3, H, W] for the label map and the null label map;
    guidance_scale: w [N] float. eps = eps_u + w (eps_c - eps_u) on the eps channels, the variance channels
    from the conditional branch (as ``sdm.diffusion.classifier_free_guidance`` does for one float w).
    Returns [N, 6|3, H, W].
    """
    if out_cond.shape != out_uncond.shape:
        raise ValueError(f"conditional output {tuple(out_cond.shape)} and unconditional "
                         f"{tuple(out_uncond.shape)} differ")
    if guidance_scale.shape != (out_cond.shape[0],):
        raise ValueError(f"guidance_scale must be [N] = [{out_cond.shape[0]}], got {list(guidance_scale.shape)}")
    w = _b(guidance_scale, out_cond)
    eps_c, eps_u = out_cond[:, :eps_channels], out_uncond[:, :eps_channels]
    return torch.cat([eps_u + w * (eps_c - eps_u), out_cond[:, eps_channels:]], dim=1)


def predict_x(z_t: Tensor, eps: Tensor, abar_t: Tensor) -> Tensor:
    """x_hat = (z_t - sigma_t eps) / alpha_t; z_t, eps [N, C, H, W], abar_t [N] in (0, 1]."""
    return (z_t - _b((1 - abar_t).sqrt(), z_t) * eps) / _b(abar_t.sqrt(), z_t)


def ddim_step(z_t: Tensor, eps: Tensor, abar_t: Tensor, abar_s: Tensor) -> Tensor:
    """One deterministic DDIM step (eta 0, no clipping) from t to s: z_s = alpha_s x_hat + sigma_s eps.

    z_t, eps [N, C, H, W]; abar_t, abar_s [N] (abar_s = 1: the step lands on x_hat). Returns z_s [N, C, H, W].
    """
    x_hat = predict_x(z_t, eps, abar_t)
    return _b(abar_s.sqrt(), z_t) * x_hat + _b((1 - abar_s).sqrt(), z_t) * eps


def two_step_target(z_t: Tensor, z_s: Tensor, abar_t: Tensor, abar_s: Tensor) -> Tensor:
    """The x-space target x_tilde of progressive distillation: ONE DDIM step from z_t with x_hat = x_tilde
    lands exactly on z_s (where the teacher's two steps ended).

    x_tilde = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t); at s = x_0
    (abar_s = 1, sigma_s = 0) it is z_s itself. z_t, z_s [N, C, H, W]; abar_t [N] in (0, 1), abar_s [N] in
    (abar_t, 1]. Returns x_tilde [N, C, H, W].
    """
    ratio = (1 - abar_s).sqrt() / (1 - abar_t).sqrt()
    denom = abar_s.sqrt() - ratio * abar_t.sqrt()
    return (z_s - _b(ratio, z_t) * z_t) / _b(denom, z_t)


def truncated_snr_weight(abar_t: Tensor) -> Tensor:
    """max(SNR_t, 1) with SNR_t = alpha_t^2 / sigma_t^2: the x-space loss weight of PD; abar_t [N] -> [N]."""
    return (abar_t / (1 - abar_t)).clamp(min=1.0)


def halving_timesteps(t: Tensor, n: int, num_timesteps: int) -> tuple[Tensor, Tensor, Tensor]:
    """The student's and the teacher's timesteps for the loop's draw t [N] long in 0..T-1 (stage two).

    The student (n steps) steps from grid(n)[j] to grid(n)[j - 1] (x_0 for j = 0), j = t * n // T; the
    teacher (2n steps) does the same in two steps through grid(2n)[2j]. Returns (t_student, t_mid, t_end),
    each [N] long on t's device, t_end = X0 (-1) for j = 0.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be [N] timesteps, got shape {list(t.shape)}")
    fine = torch.tensor([X0, *grid(2 * n, num_timesteps)], dtype=torch.long, device=t.device)
    j = t.long().clamp(0, num_timesteps - 1) * n // num_timesteps
    # fine[k + 1] == grid(2n)[k]; fine[0] == X0.
    return fine[2 * j + 2], fine[2 * j + 1], fine[2 * j]
