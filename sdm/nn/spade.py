"""SPADE GroupNorm, and every SPADE norm's gamma/beta for one label map computed once.

``out = GroupNorm(x) * (1 + gamma) + beta`` where gamma and beta are two 3x3
convs over a shared 3x3 conv + ReLU applied to the label map resized (nearest)
to the feature size.

gamma and beta depend on the label map only, never on x_t or t, so a sampling
call that runs the U-Net tens or hundreds of times on the same label map can
compute them once (``build_spade_cache`` -> ``SpadeCache``, which a norm's
forward takes in place of the label map). Building the cache:

- rows of the batch that are identical (e.g. the all-zero null condition of
  classifier-free guidance, or a label map repeated for several samples) are
  computed once; a small cache is then expanded to one entry per batch row
  (the fastest lookup), a large one (over ``FULL_ROWS_MAX_BYTES``) keeps the
  distinct rows only and broadcasts repeats at every step;
- the label map is resized once per distinct feature resolution, and the
  shared 3x3 convs of all norms at that resolution run as one convolution;
- ``1 + gamma`` is stored, so a cached norm costs one fused multiply-add.

Memory: ``2 * C * h * w`` floats per norm and row: in float32 about 1.9 GiB per
label map at the paper's ADE20K config (256x256), 2.5 GiB at Cityscapes (256x512),
3.5 MiB at the toy config; half of that when built under bf16 autocast (``sample.precision``).
``sample.cache_budget_gb`` bounds it (``sdm.spade_budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sdm.nn.layers import group_norm


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


# Rows of label maps convolved at once while building (bounds the transient memory of the hidden maps).
_BUILD_CHUNK = 4


# Above this many runs (a batch that interleaves repeated label maps) lookups gather rows instead.
_MAX_RUNS = 4
# A cache up to this size is stored per batch row (fastest per step); a larger one keeps each distinct
# label map once and broadcasts repeats (e.g. halves the memory of a guidance batch's null rows).
FULL_ROWS_MAX_BYTES = 1 << 30


@dataclass
class SpadeCache:
    """Opaque to callers: ``(1 + gamma, beta)`` of every SPADE norm for one segmap batch.

    scales[i], shifts[i]: [U, C_i, h_i, w_i] for the U distinct rows of the
    segmap, in order of first appearance; rows: [N] index of each batch row
    into those (None: all rows distinct, in batch order); runs: the batch as
    (b0, b1, u0, u1) pieces whose rows are either distinct rows u0..u1-1 or
    one row u0 repeated, so repeated rows are broadcast instead of copied
    (None: gather by ``rows``). ``segmap_shape`` is the [N, K, H, W] it was built for.
    """

    scales: list[torch.Tensor]
    shifts: list[torch.Tensor]
    rows: torch.Tensor | None
    runs: list[tuple[int, int, int, int]] | None
    segmap_shape: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return self.segmap_shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached scales and shifts (the stored rows, in their dtype)."""
        return sum(t.numel() * t.element_size() for t in (*self.scales, *self.shifts))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the modulations are stored in (the sampling precision's)."""
        return self.scales[0].dtype if self.scales else torch.float32

    def modulate(self, norm: SPADEGroupNorm, normalized: torch.Tensor) -> torch.Tensor:
        """``normalized * (1 + gamma) + beta`` for ``norm``'s cached gamma/beta; normalized: [N,C,h,w]."""
        i = norm.cache_index
        if not 0 <= i < len(self.scales):
            raise ValueError(f"this SpadeCache holds {len(self.scales)} SPADE norms but the model asks for "
                             f"norm {i}: it was built by a different model")
        scale, shift = self.scales[i], self.shifts[i]
        if normalized.shape[0] != self.batch_size or scale.shape[1:] != normalized.shape[1:]:
            raise ValueError(f"SpadeCache built for a segmap of shape {list(self.segmap_shape)} gives "
                             f"{list(scale.shape[1:])} features at SPADE norm {i}, but the forward has features "
                             f"{list(normalized.shape)}: build the cache from the forward's own segmap")
        scale, shift = scale.to(normalized.dtype), shift.to(normalized.dtype)
        if self.rows is None:
            return torch.addcmul(shift, normalized, scale)
        if self.runs is None:
            return torch.addcmul(shift[self.rows], normalized, scale[self.rows])
        out = torch.empty_like(normalized)
        for b0, b1, u0, u1 in self.runs:
            torch.addcmul(shift[u0:u1], normalized[b0:b1], scale[u0:u1], out=out[b0:b1])
        return out


def _runs(rows: list[int]) -> list[tuple[int, int, int, int]]:
    """Split a row map into pieces (b0, b1, u0, u1): distinct rows u0..u1-1, or one row u0 repeated."""
    runs = []
    b0, n = 0, len(rows)
    while b0 < n:
        b1 = b0 + 1
        if b1 < n and rows[b1] == rows[b0]:
            while b1 < n and rows[b1] == rows[b0]:
                b1 += 1
            runs.append((b0, b1, rows[b0], rows[b0] + 1))
        else:
            # Extend while the next row is the next distinct one and does not start a repeat.
            while b1 < n and rows[b1] == rows[b1 - 1] + 1 and (b1 + 1 == n or rows[b1 + 1] != rows[b1]):
                b1 += 1
            runs.append((b0, b1, rows[b0], rows[b0] + b1 - b0))
        b0 = b1
    return runs


def _distinct_rows(segmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(distinct rows [U,K,H,W] in order of first appearance, the index [N] of each batch row into them),
    or (segmap, None) when all rows differ."""
    n = segmap.shape[0]
    if n == 1:
        return segmap, None
    _, inverse = torch.unique(segmap.reshape(n, -1), dim=0, return_inverse=True)
    relabel: dict[int, int] = {}
    for u in inverse.tolist():
        relabel.setdefault(u, len(relabel))
    if len(relabel) == n:
        return segmap, None
    rows = [relabel[u] for u in inverse.tolist()]
    firsts = [rows.index(r) for r in range(len(relabel))]
    return segmap[firsts], torch.tensor(rows, device=segmap.device)


def _modulations_at(norms: Sequence[SPADEGroupNorm], seg: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(1 + gamma, beta) of each norm for seg [U,K,h,w] already at the norms' feature size."""
    shared_w = torch.cat([n.mlp_shared[0].weight for n in norms])
    shared_b = torch.cat([n.mlp_shared[0].bias for n in norms])
    hidden = torch.relu(F.conv2d(seg, shared_w, shared_b, padding=1))
    out = []
    for norm, hid in zip(norms, hidden.split([n.mlp_shared[0].out_channels for n in norms], dim=1), strict=True):
        scale = F.conv2d(hid, norm.mlp_gamma.weight, norm.mlp_gamma.bias, padding=1)
        scale += 1  # in place: 1 + gamma without a second tensor
        out.append((scale, F.conv2d(hid, norm.mlp_beta.weight, norm.mlp_beta.bias, padding=1)))
    return out


def spade_cache_bytes_per_row(norms: Sequence[SPADEGroupNorm], height: int, width: int, element_size: int) -> int:
    """Bytes of one label map's cached (1 + gamma, beta) over ``norms`` at an H x W input: 2 * C * h * w each."""
    return sum(2 * n.channels * (height // n.ds) * (width // n.ds) * element_size for n in norms)


@torch.no_grad()
def build_spade_cache(norms: Sequence[SPADEGroupNorm], segmap: torch.Tensor) -> SpadeCache:
    """Precompute every norm's modulation for segmap [N,K,H,W] (H, W divisible by each norm's ``ds``).

    ``norms[i].cache_index`` must be i. For inference: no gradients flow into the cache. Under bf16
    autocast the convolutions return bf16, so the cache is stored in bf16 (half the memory of fp32).
    """
    for i, norm in enumerate(norms):
        if norm.cache_index != i:
            raise ValueError(f"SPADE norm {i} has cache_index {norm.cache_index}")
    seg, rows = _distinct_rows(segmap)
    height, width = segmap.shape[-2:]
    scales: list[torch.Tensor | None] = [None] * len(norms)
    shifts: list[torch.Tensor | None] = [None] * len(norms)
    for ds in sorted({n.ds for n in norms}):
        group = [n for n in norms if n.ds == ds]
        resized = F.interpolate(seg, size=(height // ds, width // ds), mode="nearest")
        chunks = [_modulations_at(group, part) for part in resized.split(_BUILD_CHUNK)]
        for k, norm in enumerate(group):
            if len(chunks) == 1:
                scales[norm.cache_index], shifts[norm.cache_index] = chunks[0][k]
            else:
                scales[norm.cache_index] = torch.cat([c[k][0] for c in chunks])
                shifts[norm.cache_index] = torch.cat([c[k][1] for c in chunks])
    runs = None
    full_bytes = sum(t[0].numel() * t.element_size() * 2 for t in scales) * segmap.shape[0]  # type: ignore[union-attr]
    if rows is not None and full_bytes <= FULL_ROWS_MAX_BYTES:
        scales = [t[rows] for t in scales]  # type: ignore[index]
        shifts = [t[rows] for t in shifts]  # type: ignore[index]
        rows = None
    if rows is not None:
        runs = _runs(rows.tolist())
        runs = runs if len(runs) <= _MAX_RUNS else None
    return SpadeCache(scales=scales, shifts=shifts, rows=rows, runs=runs,  # type: ignore[arg-type]
                      segmap_shape=tuple(segmap.shape))
