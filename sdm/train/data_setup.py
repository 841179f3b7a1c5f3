"""The datasets a training worker reads: the augmented train split and the fixed sample-grid label maps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from sdm.config import Config
from sdm.train.batches import TrainingDataset

GRID_ROWS = 8


def training_dataset(config: Config) -> TrainingDataset:
    """The whole train split, augmented, in id order. Every worker opens all of it: the loop
    derives the order and each rank's items of the global batch (``sdm.train.rng``,
    ``sdm.train.batches``) instead of using the dataset's own shuffling and rank slicing."""
    from sdm.data.loader import PreparedDataset

    return PreparedDataset.from_config(config.data, "train", augment=True, shuffle=False, rank=0, world_size=1,
                                       seed=config.train.seed)


def grid_items(config: Config, splits: list[str], rows: int = GRID_ROWS) -> list[dict[str, Any]]:
    """The first ``rows`` items of the val split (train when there is none), unaugmented."""
    from sdm.data.loader import PreparedDataset

    split = "val" if "val" in splits else "train"
    ds = PreparedDataset(config.data.prepared, split=split, augment=False, shuffle=False)
    return [ds[i] for i in range(min(rows, len(ds)))]


def sample_grid_factory(config: Config, splits: list[str], palette: list[list[int]] | None
                        ) -> Callable[[nn.Module], Any]:
    """Builds rank 0's ``EmaSampleGrid`` from the training model (a private copy is made)."""

    def make(model: nn.Module) -> Any:
        from sdm.train.sample_grid import EmaSampleGrid

        return EmaSampleGrid(config, model, grid_items(config, splits), palette=palette)

    return make
