"""Bound the SPADE cache's memory (``sample.cache_budget_gb``): how many label maps one sampling call takes.

The cache holds ``2 * C * h * w`` values per SPADE norm and label map (``sdm.nn.spade``): 1.9 GiB per
label map at the paper's ADE20K config in fp32, half that in bf16. With classifier-free guidance a
call's cache covers [cond; null], at most two rows per label map. Past the budget the label maps are
sampled in chunks that fit; where not even one label map fits, sampling runs uncached (the plain
per-step SPADE convolutions: slower, no cache memory at all). Neither changes the images beyond
float rounding: chunks give identical images (every sample has its own noise generator), the
uncached path the same images to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdm.nn.spade import spade_cache_bytes_per_row

# cache_budget_gb counts decimal gigabytes, as its name says.
BYTES_PER_GB = 1e9


@dataclass(frozen=True)
class CachePlan:
    """How ``generate`` samples under the budget.

    chunk: label maps per sampling call (<= the requested batch size); use_cache: False when one label
    map's cache alone is over the budget; bytes_per_label_map: the cache's upper bound per label map in the
    sampling dtype (None for a model without SPADE norms); budget_bytes: 0 = unbounded.
    """

    chunk: int
    use_cache: bool
    bytes_per_label_map: int | None
    budget_bytes: float

    def describe(self) -> str:
        """One line for verbose output: the size per label map and what the budget made of it."""
        if self.bytes_per_label_map is None:
            return "no SPADE cache (the model has no SPADE norms)"
        size = f"SPADE cache {self.bytes_per_label_map / 2**20:.1f} MiB per label map"
        if not self.budget_bytes:
            return f"{size} (no budget)"
        budget = f"budget {self.budget_bytes / BYTES_PER_GB:g} GB"
        if not self.use_cache:
            return f"{size}: over the {budget}, sampling uncached"
        return f"{size}, {budget}: {self.chunk} label map(s) per sampling call"


def cache_bytes_per_label_map(model: Any, image_size: tuple[int, int] | list[int], element_size: int,
                              guided: bool) -> int | None:
    """Upper bound of one label map's SPADE cache in bytes: one row, two with guidance ([cond; null]).

    None for a model that has no ``spade_norms`` (nothing to bound).
    """
    norms = getattr(model, "spade_norms", None)
    if not norms:
        return None
    per_row = spade_cache_bytes_per_row(norms, int(image_size[0]), int(image_size[1]), element_size)
    return per_row * (2 if guided else 1)


def plan_cache(batch_size: int, bytes_per_label_map: int | None, budget_gb: float) -> CachePlan:
    """The chunk size and cache use for ``batch_size`` label maps per call under ``budget_gb`` (0: unbounded)."""
    if budget_gb < 0:
        raise ValueError(f"sample.cache_budget_gb must be >= 0 (0 = unbounded), got {budget_gb}")
    budget = budget_gb * BYTES_PER_GB
    if not budget or bytes_per_label_map is None:
        return CachePlan(batch_size, True, bytes_per_label_map, budget)
    fit = int(budget // bytes_per_label_map)
    if fit < 1:
        return CachePlan(batch_size, False, bytes_per_label_map, budget)
    return CachePlan(min(batch_size, fit), True, bytes_per_label_map, budget)
