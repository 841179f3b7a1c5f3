"""SPADE GroupNorm: a parameter-free GroupNorm modulated by the label map.

``out = GroupNorm(x) * (1 + gamma) + beta`` where gamma and beta are two 3x3
convs over a shared 3x3 conv + ReLU applied to the label map resized (nearest)
to the feature size. gamma/beta depend on the label map only, never on x_t or
t, which is what ``sdm.nn.spade_cache`` exploits during sampling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from sdm.nn.layers import group_norm

if TYPE_CHECKING:
    from sdm.nn.spade_cache import SpadeCache


class SPADEGroupNorm(nn.Module):
    """GroupNorm(32, affine=False) followed by label-map-conditioned scale and shift.

    Names follow the official checkpoints: ``mlp_shared`` (conv + ReLU),
    ``mlp_gamma``, ``mlp_beta``. ``ds`` (the feature map's downsampling factor
    relative to the input) and ``cache_index`` are set by the U-Net so that a
    ``SpadeCache`` can precompute this norm's gamma/beta.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)
        self.ds = 1
        self.cache_index = -1

    def modulation(self, segmap: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta [N,C,h,w] for segmap [N,cond_channels,H,W] resized (nearest) to ``size`` = (h, w)."""
        seg = F.interpolate(segmap, size=size, mode="nearest")
        actv = self.mlp_shared(seg)
        return self.mlp_gamma(actv), self.mlp_beta(actv)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | SpadeCache) -> torch.Tensor:
        """x: [N,C,h,w]; cond: the segmap [N,cond_channels,H,W] or a ``SpadeCache`` -> [N,C,h,w]."""
        normalized = self.norm(x)
        if isinstance(cond, torch.Tensor):
            gamma, beta = self.modulation(cond.to(x.dtype), tuple(x.shape[-2:]))
            # The same fused multiply-add as the cached path, so both round alike.
            return torch.addcmul(beta, normalized, 1 + gamma)
        return cond.modulate(self, normalized)
