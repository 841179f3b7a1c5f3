"""Every SPADE norm's gamma/beta for one label map, computed once and reused at every step.

SPADE's gamma and beta depend only on the label map, so a sampling call that
runs the U-Net tens or hundreds of times on the same label map can compute
them once. Building the cache:

- rows of the batch that are identical (e.g. the all-zero null condition of
  classifier-free guidance, or a label map repeated for several samples) are
  computed once and gathered back at lookup time;
- the label map is resized once per distinct feature resolution, and the
  shared 3x3 convs of all norms at that resolution run as one convolution;
- each norm's gamma and beta convs run as one convolution, and ``1 + gamma``
  is stored so a cached norm costs one fused multiply-add.

Memory: ``2 * C * h * w`` floats per norm and distinct row (about 1.3 GB per
distinct label map at the paper's 256x256 config in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdm.nn.spade import SPADEGroupNorm

# Rows of label maps convolved at once while building (bounds the transient memory of the hidden maps).
_BUILD_CHUNK = 4


@dataclass
class SpadeCache:
    """Opaque to callers: ``(1 + gamma, beta)`` of every SPADE norm for one segmap batch.

    scales[i], shifts[i]: [U, C_i, h_i, w_i] for the U distinct rows of the
    segmap; rows: [N] index of each batch row into those (None: rows are the
    batch itself, in order). ``segmap_shape`` is the [N, K, H, W] it was built for.
    """

    scales: list[torch.Tensor]
    shifts: list[torch.Tensor]
    rows: torch.Tensor | None
    segmap_shape: tuple[int, ...]

    @property
    def batch_size(self) -> int:
        return self.segmap_shape[0]

    def lookup(self, norm: SPADEGroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1 + gamma, beta)`` for ``norm`` applied to features x [N,C,h,w]; both [N,C,h,w]."""
        i = norm.cache_index
        if not 0 <= i < len(self.scales):
            raise ValueError(f"this SpadeCache holds {len(self.scales)} SPADE norms but the model asks for "
                             f"norm {i}: it was built by a different model")
        scale, shift = self.scales[i], self.shifts[i]
        if x.shape[0] != self.batch_size or scale.shape[1:] != x.shape[1:]:
            raise ValueError(f"SpadeCache built for a segmap of shape {list(self.segmap_shape)} gives "
                             f"{list(scale.shape[1:])} features at SPADE norm {i}, but the forward has "
                             f"features {list(x.shape)}: build the cache from the forward's own segmap")
        if self.rows is not None:
            scale, shift = scale[self.rows], shift[self.rows]
        return scale.to(x.dtype), shift.to(x.dtype)


def _distinct_rows(segmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(distinct rows [U,K,H,W], index [N] of each row into them, or None when all rows differ)."""
    n = segmap.shape[0]
    if n == 1:
        return segmap, None
    unique, inverse = torch.unique(segmap.reshape(n, -1), dim=0, return_inverse=True)
    if unique.shape[0] == n:
        return segmap, None
    return unique.reshape(-1, *segmap.shape[1:]), inverse


def _modulations_at(norms: Sequence[SPADEGroupNorm], seg: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(1 + gamma, beta) of each norm for seg [U,K,h,w] already at the norms' feature size."""
    shared_w = torch.cat([n.mlp_shared[0].weight for n in norms])
    shared_b = torch.cat([n.mlp_shared[0].bias for n in norms])
    hidden = torch.relu(F.conv2d(seg, shared_w, shared_b, padding=1))
    out = []
    for k, hid in enumerate(hidden.split([n.mlp_shared[0].out_channels for n in norms], dim=1)):
        norm = norms[k]
        weight = torch.cat([norm.mlp_gamma.weight, norm.mlp_beta.weight])
        bias = torch.cat([norm.mlp_gamma.bias, norm.mlp_beta.bias])
        both = F.conv2d(hid, weight, bias, padding=1)
        both[:, : norm.channels] += 1  # in place: 1 + gamma and beta stay views of one tensor
        scale, shift = both.split(norm.channels, dim=1)
        out.append((scale, shift))
    return out


@torch.no_grad()
def build_spade_cache(norms: Sequence[SPADEGroupNorm], segmap: torch.Tensor) -> SpadeCache:
    """Precompute every norm's modulation for segmap [N,K,H,W] (H, W divisible by each norm's ``ds``).

    ``norms[i].cache_index`` must be i. For inference: no gradients flow into the cache.
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
    return SpadeCache(scales=scales, shifts=shifts, rows=rows, segmap_shape=tuple(segmap.shape))  # type: ignore[arg-type]
