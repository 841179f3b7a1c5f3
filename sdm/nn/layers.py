"""Small pieces shared by the U-Net blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# guided-diffusion normalises with 32 groups everywhere (plain and SPADE norms).
NORM_GROUPS = 32


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with the 32 groups of the official model (channels must be a multiple of 32)."""
    return nn.GroupNorm(NORM_GROUPS, channels, affine=affine)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity, the output as 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,2H,2W] by nearest-neighbour repetition."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample_avg(x: torch.Tensor) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,H/2,W/2] by 2x2 average pooling."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv (decoder, when not resblock_updown)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest(x))


class Downsample(nn.Module):
    """A strided 3x3 conv that halves H and W (encoder, when not resblock_updown)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Run ``fn(*args)``, recomputing its activations in backward when ``enabled`` (saves memory)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
