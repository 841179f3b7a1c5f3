"""``PreparedDataset``: a map-style torch dataset over prepared Parquet shards.

DDP-aware without a sampler: each epoch the split's rows are put in one order
(a permutation drawn from (seed, epoch) when shuffling, else sorted by id) and
rank r takes every world_size-th row from position r, so ranks see disjoint
rows that together cover the split (their lengths differ by at most one).
Augmentation is seeded by (seed, epoch, row), so it is the same whatever the
number of DataLoader workers. Use it with ``DataLoader(shuffle=False)`` and
call ``set_epoch(e)`` before each epoch (workers must be re-created per epoch,
the default, for it to reach them).

Rows are streamed, not loaded: opening reads the shards' footers and ids, and
an item's PNG bytes are read with its Parquet row group, a couple of groups
kept at a time (``sdm.data.stream``), so a worker's memory stays flat however
big the split is and each rank reads only the row groups holding its rows.
Every shard is first checked against the size and sha256 that manifest.json
lists for it (a streaming hash, once per process), so a flipped byte is an
error naming the shard, never silently different training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sdm.data.manifest import read_manifest
from sdm.data.shards import decode_png, verify_shards
from sdm.data.stream import DEFAULT_CACHE_GROUPS, ShardRows
from sdm.data.transforms import train_augment
from sdm.errors import InputError


class PreparedDataset(Dataset):
    """Items: ``{"image": FloatTensor[3,H,W] in [-1,1], "label": LongTensor[H,W],
    "instance": LongTensor[H,W] (only when the dataset has instances), "id": str}``.

    ``shuffle`` defaults to ``augment`` (training order); evaluation gets id order.
    """

    def __init__(
        self,
        prepared_dir: str | Path,
        split: str = "train",
        *,
        augment: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool | None = None,
        random_crop: bool = True,
        random_flip: bool = True,
        crop_scale: tuple[float, float] | list[float] = (0.8, 1.0),
        cache_groups: int = DEFAULT_CACHE_GROUPS,
    ):
        self.prepared_dir = Path(prepared_dir)
        self.manifest = read_manifest(self.prepared_dir)
        if split not in self.manifest.counts:
            raise InputError(f"{self.prepared_dir}: no split {split!r}; it has {', '.join(self.manifest.counts)}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.split, self.rank, self.world_size, self.seed = split, rank, world_size, seed
        self.augment = augment
        self.shuffle = augment if shuffle is None else shuffle
        self.has_instances = self.manifest.has_instances
        self.image_size = tuple(self.manifest.image_size)
        verify_shards(self.prepared_dir, self.manifest, split)
        paths = [self.prepared_dir / f for f in self.manifest.shard_files(split)]
        columns = ["id", "image", "label"] + (["instance"] if self.has_instances else [])
        self._store = ShardRows(paths, columns[1:], cache_groups=cache_groups)
        self._ids: list[str] = self._store.ids()
        self._transform = (
            train_augment(self.image_size, random_crop=random_crop, random_flip=random_flip,
                          crop_scale=(float(crop_scale[0]), float(crop_scale[1])))
            if augment else None
        )
        self.epoch = 0
        self._rows = self._rank_rows()

    @classmethod
    def from_config(cls, data_cfg: Any, split: str = "train", **kwargs: Any) -> PreparedDataset:
        """From a ``DataConfig`` (prepared dir and augmentation settings); kwargs as in the constructor."""
        kwargs.setdefault("random_crop", data_cfg.random_crop)
        kwargs.setdefault("random_flip", data_cfg.random_flip)
        kwargs.setdefault("crop_scale", tuple(data_cfg.crop_scale))
        return cls(data_cfg.prepared, split, **kwargs)

    def _rank_rows(self) -> np.ndarray:
        n = len(self._ids)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation (deterministic in (seed, epoch))."""
        self.epoch = int(epoch)
        self._rows = self._rank_rows()

    @property
    def ids(self) -> list[str]:
        """Ids of this rank's items, in item order, for the current epoch."""
        return [self._ids[r] for r in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def _bytes(self, column: str, row: int) -> np.ndarray:
        return self._store.cell(column, row)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self._rows[index])
        image = decode_png(self._bytes("image", row), rgb=True)
        label = decode_png(self._bytes("label", row))
        instance = decode_png(self._bytes("instance", row)) if self.has_instances else None
        if self._transform is not None:
            item_seed = np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(1)[0]
            self._transform.set_random_seed(int(item_seed))
            masks = [label] if instance is None else [label, instance]
            out = self._transform(image=image, masks=masks)
            image, masks = out["image"], out["masks"]
            label = masks[0]
            instance = masks[1] if instance is not None else None
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0),
            "label": torch.from_numpy(np.asarray(label, dtype=np.int64)),
            "id": self._ids[row],
        }
        if instance is not None:
            item["instance"] = torch.from_numpy(np.asarray(instance, dtype=np.int64))
        return item
