"""Which items each rank trains on at each step, and all training randomness, derived from (seed, phase, step, index).

Nothing random in training comes from a stateful generator that would have to
be saved: the data order of an epoch, each sample's timestep, noise and
guidance-drop decision, and the per-step torch seed (dropout) are pure
functions of the run seed, the phase, the step and the *global* sample index.
So a resumed run continues exactly where it stopped with no RNG blobs in the
checkpoint, and N workers that each take a slice of the global batch draw
the same numbers one worker would draw for the whole batch.

Workers do not shard the dataset themselves: rank r of W takes positions
[r * B/W, (r+1) * B/W) of the global batch, so W workers together see exactly
the batch one worker would see (the same items, augmentations and noise).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sdm.conditioning import drop_mask
from sdm.config import Config

_MASK63 = (1 << 63) - 1



def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from the given parts (stable across processes and machines).

    Python's ``hash`` is salted per process, so a cryptographic hash is used.
    """
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _MASK63


def generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(*parts)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


@dataclass(frozen=True)
class DataOrder:
    """Which dataset items make up the global batch of each step.

    Epochs are ``num_items // batch_size`` full batches (the remainder of a
    shuffled epoch is dropped); the permutation of an epoch is derived from
    (seed, stream, epoch), so the order resumes exactly from a step number.
    """

    num_items: int
    batch_size: int
    seed: int
    stream: str

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_items < self.batch_size:
            raise ValueError(f"{self.num_items} training items are fewer than the global batch {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.batch_size

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def augment_epoch(self, epoch: int) -> int:
        """The epoch number handed to the dataset's ``set_epoch`` (distinct per stream)."""
        return derive_seed(self.seed, self.stream, "augment", epoch) & 0x7FFFFFFF

    def global_indices(self, step: int) -> list[int]:
        """Dataset indices of the global batch for ``step`` (0-based), length batch_size."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.num_items, generator=generator(self.seed, self.stream, "epoch", epoch))
        return perm[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()


def sample_randomness(
    *,
    seed: int,
    stream: str,
    step: int,
    sample_indices: range,
    num_timesteps: int,
    shape: tuple[int, int, int],
    drop_rate: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Timesteps, noise and drop mask for the given global sample indices of a step.

    Returns ``t`` LongTensor[n] uniform in [0, num_timesteps), ``noise``
    FloatTensor[n, *shape] standard normal, ``drop`` BoolTensor[n]; all on CPU.
    """
    ts, noises, drops = [], [], []
    for j in sample_indices:
        g = generator(seed, stream, "sample", step, j)
        ts.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noises.append(torch.randn((1, *shape), generator=g))
        drops.append(drop_mask(1, drop_rate, g))
    return torch.cat(ts), torch.cat(noises), torch.cat(drops)


def step_torch_seed(seed: int, stream: str, step: int, rank: int) -> int:
    """The global torch seed for one step on one rank (dropout and other in-model randomness)."""
    return derive_seed(seed, stream, "torch", step, rank)


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


def training_dataset(config: Config) -> TrainingDataset:
    """The whole train split, augmented, in id order. Every worker opens all of it: ``DataOrder`` and
    ``local_positions`` pick each rank's items of the global batch instead of the dataset's own
    shuffling and rank slicing."""
    from sdm.data.loader import PreparedDataset

    return PreparedDataset.from_config(config.data, "train", augment=True, shuffle=False, rank=0, world_size=1,
                                       seed=config.train.seed)
