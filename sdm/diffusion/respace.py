"""Timestep respacing: a K-step process on a subset of the original T timesteps.

The respaced process keeps alpha_bar at the kept timesteps (so its betas are
1 - abar[t_i] / abar[t_{i-1}]) and remembers which original timestep each of
its steps is (``timestep_map``): the network is always fed the original value,
as the official code does, so a model trained on T = 1000 samples correctly at
any step count.
"""

from __future__ import annotations

import numpy as np

from sdm.diffusion.gaussian import GaussianDiffusion


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` original timesteps, evenly spaced over [0, T - 1] and rounded; ascending.

    Both ends are always kept (0 and T - 1), as in the official respacing with
    one section. One step keeps T - 1 (a single denoising from pure noise).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} diffusion steps to {steps}; expected 1..{num_timesteps}")
    if steps == 1:
        return [num_timesteps - 1]
    # Accumulating the float stride (rather than i * stride) reproduces the
    # official code's rounding at ties, so both pick the same timesteps.
    stride = (num_timesteps - 1) / (steps - 1)
    kept, position = set(), 0.0
    for _ in range(steps):
        kept.add(round(position))
        position += stride
    return sorted(kept)


def respace(diffusion: GaussianDiffusion, steps: int) -> GaussianDiffusion:
    """The process restricted to ``space_timesteps(T, steps)``; keeps learn_sigma and lambda_vlb.

    Respacing an already respaced process composes the timestep maps.
    """
    keep = space_timesteps(diffusion.num_timesteps, steps)
    alphas_cumprod = diffusion.alphas_cumprod.numpy()[keep]
    prev = np.append(1.0, alphas_cumprod[:-1])
    betas = 1.0 - alphas_cumprod / prev
    timestep_map = diffusion.timestep_map.numpy()[keep]
    return GaussianDiffusion.from_betas(
        betas, diffusion.learn_sigma, diffusion.lambda_vlb, timestep_map, diffusion.original_num_timesteps
    )
