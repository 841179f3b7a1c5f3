"""Classifier-free guidance (Ho & Salimans), as SDM applies it: on the epsilon channels only."""

from __future__ import annotations

import torch
from torch import Tensor


def classifier_free_guidance(
    out_cond: Tensor, out_uncond: Tensor | None, guidance_scale: float, eps_channels: int = 3
) -> Tensor:
    """eps = eps_uncond + s * (eps_cond - eps_uncond); the variance channels come from the conditional branch.

    ``out_cond`` / ``out_uncond``: model outputs [N, 6|3, H, W] for the label map
    and for the null (all-zero) label map. At s == 1 the conditional output is
    returned as it is (and the unconditional one may be None: it is not needed).
    """
    if guidance_scale == 1.0:
        return out_cond
    if out_uncond is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs the unconditional output")
    if out_cond.shape != out_uncond.shape:
        raise ValueError(f"conditional output {tuple(out_cond.shape)} and unconditional "
                         f"{tuple(out_uncond.shape)} differ")
    eps_c, eps_u = out_cond[:, :eps_channels], out_uncond[:, :eps_channels]
    eps = eps_u + guidance_scale * (eps_c - eps_u)
    return torch.cat([eps, out_cond[:, eps_channels:]], dim=1)
