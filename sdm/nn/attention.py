"""Multi-head self-attention over the spatial positions of a feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdm.errors import InputError
from sdm.nn.layers import group_norm, maybe_checkpoint, zero_init


def resolve_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """The number of heads: ``channels // num_head_channels`` when that is set (!= -1), else ``num_heads``."""
    if num_head_channels == -1:
        heads = num_heads
    else:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise InputError(f"attention over {channels} channels: model.num_head_channels={num_head_channels} "
                             f"must divide the channel count")
        heads = channels // num_head_channels
    if heads <= 0 or channels % heads:
        raise InputError(f"attention over {channels} channels: {heads} heads do not divide the channel count "
                         f"(set model.num_heads or model.num_head_channels)")
    return heads


class AttentionBlock(nn.Module):
    """Residual self-attention: ``x + proj_out(attention(qkv(norm(x))))``.

    Names and shapes follow the official checkpoints: ``norm`` (GroupNorm),
    ``qkv`` (Conv1d C -> 3C), ``proj_out`` (zero-initialised Conv1d C -> C).
    The qkv channels are laid out head by head, each head holding its q, k and
    v blocks of C/heads channels (the official "legacy" order), so official
    weights produce the same attention.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.num_heads = resolve_heads(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N,C,H,W] -> [N,C,H,W]."""
        return maybe_checkpoint(self.use_checkpoint, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        tokens = height * width
        flat = x.reshape(n, c, tokens)
        qkv = self.qkv(self.norm(flat))
        # [N, heads*(q|k|v)*d, T] -> 3 x [N, heads, T, d]
        qkv = qkv.reshape(n, self.num_heads, 3, c // self.num_heads, tokens).permute(2, 0, 1, 4, 3)
        q, k, v = qkv.unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v)  # [N, heads, T, d], scale 1/sqrt(d)
        attended = attended.transpose(-1, -2).reshape(n, c, tokens)
        return (flat + self.proj_out(attended)).reshape(n, c, height, width)
