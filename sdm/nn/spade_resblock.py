"""The middle/decoder ResBlock: both of its norms are SPADE norms fed the label map."""

from __future__ import annotations

import torch
from torch import nn

from sdm.nn.layers import maybe_checkpoint, zero_init
from sdm.nn.resblock import resample_fn
from sdm.nn.spade import SpadeCache, SPADEGroupNorm


class SPADEResBlock(nn.Module):
    """A residual block conditioned on the timestep embedding and, through SPADE, on the label map.

    Names follow the official ``SDMResBlock``: ``in_norm`` (SPADE), ``in_layers``
    (SiLU, conv), ``emb_layers`` (SiLU, linear), ``out_norm`` (SPADE),
    ``out_layers`` (SiLU, dropout, zero-initialised conv), ``skip_connection``.
    With ``updown="up"`` the in_norm runs at the input size and the out_norm at
    twice it.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        cond_channels: int,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        use_checkpoint: bool = False,
        updown: str | None = None,
        spade_hidden: int = 128,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.updown = updown
        self.resample = resample_fn(updown)
        self.in_norm = SPADEGroupNorm(channels, cond_channels, spade_hidden)
        self.in_layers = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = SPADEGroupNorm(out_channels, cond_channels, spade_hidden)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(p=dropout), zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def set_ds(self, ds: int) -> None:
        """Record the input's downsampling factor (for the SPADE cache's resolutions)."""
        self.in_norm.ds = ds
        self.out_norm.ds = ds // 2 if self.updown == "up" else (ds * 2 if self.updown == "down" else ds)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | SpadeCache) -> torch.Tensor:
        """x: [N,C,H,W], emb: [N,E], cond: segmap [N,K,H0,W0] or SpadeCache -> [N,C_out,H',W']."""
        return maybe_checkpoint(self.use_checkpoint, self._forward, x, emb, cond)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | SpadeCache) -> torch.Tensor:
        act, conv = self.in_layers
        h = act(self.in_norm(x, cond))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_norm(h, cond) * (1 + scale) + shift
        else:
            h = self.out_norm(h + emb_out, cond)
        return self.skip_connection(x) + self.out_layers(h)
