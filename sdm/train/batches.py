"""Each worker's slice of a step's global batch, fetched in the order ``DataOrder`` derives.

Workers do not shard the dataset themselves: rank r of W takes positions
[r * B/W, (r+1) * B/W) of the global batch, so W workers together see exactly
the batch one worker would see (the same items, augmentations and noise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sdm.train.rng import DataOrder


class TrainingDataset(Protocol):
    """What the loop needs of a dataset (``sdm.data.loader.PreparedDataset`` fits)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def local_positions(global_batch: int, rank: int, world_size: int) -> range:
    """Positions in the global batch that ``rank`` trains on."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by {world_size} workers")
    per = global_batch // world_size
    return range(rank * per, (rank + 1) * per)


class _EpochItems(Dataset):
    """Items addressed as (augmentation epoch, index), so loader worker processes need no set_epoch call."""

    def __init__(self, dataset: TrainingDataset) -> None:
        self.dataset = dataset
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self._epoch = epoch
        return self.dataset[index]


class _StepBatches(Sampler):
    """Yields, for steps start..end-1, this rank's list of (augmentation epoch, index)."""

    def __init__(self, order: DataOrder, start: int, end: int, positions: range) -> None:
        self.order, self.start, self.end, self.positions = order, start, end, positions

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            indices = self.order.global_indices(step)
            epoch = self.order.augment_epoch(self.order.epoch_of(step))
            yield [(epoch, indices[p]) for p in self.positions]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into image [n,3,H,W] float in [-1,1], label [n,H,W] long, instance [n,H,W] long or None."""
    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.stack([it["label"] for it in items]).long(),
        "instance": None,
        "id": [it.get("id", "") for it in items],
    }
    if all("instance" in it and it["instance"] is not None for it in items):
        out["instance"] = torch.stack([it["instance"] for it in items]).long()
    return out


def step_batches(dataset: TrainingDataset, order: DataOrder, start: int, end: int, positions: range,
                 num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """This rank's batches for steps start..end-1 (``num_workers`` loader processes prefetch them)."""
    loader = DataLoader(_EpochItems(dataset), batch_sampler=_StepBatches(order, start, end, positions),
                        num_workers=num_workers, collate_fn=collate, persistent_workers=False)
    yield from loader
