"""The encoder's ResBlock: GroupNorm, timestep scale-shift, optional 2x up/down resampling."""

from __future__ import annotations

import torch
from torch import nn

from sdm.nn.layers import downsample_avg, group_norm, maybe_checkpoint, upsample_nearest, zero_init


def resample_fn(updown: str | None):
    """The parameter-free resampling used inside up/down ResBlocks (None: identity)."""
    if updown is None:
        return None
    if updown == "up":
        return upsample_nearest
    if updown == "down":
        return downsample_avg
    raise ValueError(f"updown must be 'up', 'down' or None, got {updown!r}")


class ResBlock(nn.Module):
    """A residual block conditioned on the timestep embedding only (no label map).

    Submodule names follow the official checkpoints: ``in_layers`` (norm, SiLU,
    conv), ``emb_layers`` (SiLU, linear), ``out_layers`` (norm, SiLU, dropout,
    zero-initialised conv), ``skip_connection`` (identity or 1x1 conv).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        use_checkpoint: bool = False,
        updown: str | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.resample = resample_fn(updown)
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: [N,C,H,W], emb: [N,E] -> [N,C_out,H',W'] (H' = 2H up, H/2 down, else H)."""
        return maybe_checkpoint(self.use_checkpoint, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.resample is not None:
            # Resample after the activation and before the conv, skip path alike.
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = rest(out_norm(h + emb_out))
        return self.skip_connection(x) + h
