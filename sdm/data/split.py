"""A reproducible train/val split for formats without an official one.

Rule (documented in data/README.md): every id gets the key
``sha256(f"{split_seed}:{id}")``; the ``round(n * val_fraction)`` ids with the
smallest keys are ``val`` (at least one when val_fraction > 0 and n >= 2), the
rest ``train``. An id's key does not depend on the other ids, so adding or
removing examples moves few others between splits.
"""

from __future__ import annotations

import hashlib


def split_key(item_id: str, split_seed: int) -> str:
    return hashlib.sha256(f"{split_seed}:{item_id}".encode()).hexdigest()


def assign_splits(ids: list[str], val_fraction: float, split_seed: int) -> dict[str, str]:
    """id -> "train" | "val"."""
    n = len(ids)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    ranked = sorted(ids, key=lambda i: (split_key(i, split_seed), i))
    val = set(ranked[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}
