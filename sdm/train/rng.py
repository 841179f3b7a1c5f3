"""All training randomness, derived from (seed, phase, step, index).

Nothing random in training comes from a stateful generator that would have to
be saved: the data order of an epoch, each sample's timestep, noise and
guidance-drop decision, and the per-step torch seed (dropout) are pure
functions of the run seed, the phase, the step and the *global* sample index.
So a resumed run continues exactly where it stopped with no RNG blobs in the
checkpoint, and N workers that each take a slice of the global batch draw
the same numbers one worker would draw for the whole batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from sdm.conditioning import drop_mask

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
