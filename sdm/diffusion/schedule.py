"""Beta schedules of the forward process q(x_t | x_{t-1}) (float64, numpy)."""

from __future__ import annotations

import math

import numpy as np


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, stretched so that any T covers the same noise range.

    Returns float64 [T]: evenly spaced from ``scale * 1e-4`` to ``scale * 0.02`` with
    ``scale = 1000 / T`` (at T = 1000: 1e-4 .. 0.02, the DDPM / SDM values).
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2).

    Returns float64 [T] with beta_t = 1 - alpha_bar((t + 1) / T) / alpha_bar(t / T),
    capped at ``max_beta`` so the last step stays invertible.
    """
    def alpha_bar(s: np.ndarray) -> np.ndarray:
        return np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    betas = 1.0 - alpha_bar(s[1:]) / alpha_bar(s[:-1])
    return np.minimum(betas, max_beta)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The betas [T] (float64) of the schedule called ``name`` ('linear' or 'cosine')."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {', '.join(BETA_SCHEDULES)}")
    if num_timesteps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_timesteps}")
    return BETA_SCHEDULES[name](num_timesteps)
