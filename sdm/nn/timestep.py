"""Sinusoidal timestep embedding (guided-diffusion layout: cosines first, then sines)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed timesteps as sinusoids of geometrically spaced frequencies.

    t: [N] timesteps (long or float; a respaced sampler passes the original
    timestep values, which may be fractional). Returns float32 [N, dim]:
    ``cos(t * f_i)`` for the first half, ``sin(t * f_i)`` for the second, with
    ``f_i = max_period ** (-i / (dim // 2))``; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
