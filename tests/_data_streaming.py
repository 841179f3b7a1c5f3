"""Prepared datasets of any size made fast (rows of a small prepared set repeated under new ids), and a probe
that measures a training worker's memory growth in a clean process (``python tests/_data_streaming.py DIR``)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sdm.data.manifest import read_manifest, write_manifest
from sdm.data.shards import ShardWriter, encode_png


def replicate(base: Path, out: Path, n: int, *, shard_kib: int | None = None, group_kib: int | None = None,
              noise: bool = False) -> Path:
    """A copy of prepared ``base`` whose train split holds ``n`` rows (base's train rows cycled, ids item_000000..),
    written with ShardWriter (smaller shards / row groups when given, to exercise many of each); val as in base.
    ``noise``: the images replaced by random pixels (PNG cannot compress them: bytes as large as a photo's)."""
    m = read_manifest(base)
    rows = pq.read_table([base / f for f in m.shard_files("train")][0]).to_pylist()
    if noise:
        rng = np.random.default_rng(0)
        h, w = m.image_size
        rows = [{**r, "image": encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))} for r in rows]
    out.mkdir(parents=True)
    w = ShardWriter(out, "train", m.has_instances)
    if shard_kib:
        w.shard_bytes = shard_kib << 10
    if group_kib:
        w.row_group_bytes = group_kib << 10
    for i in range(n):
        w.add({**rows[i % len(rows)], "id": f"item_{i:06d}"})
    shards = [vars(s) for s in w.close()]
    for e in m.shard_entries("val"):
        shutil.copy(base / e["file"], out / e["file"])
        shards.append(e)
    write_manifest(dataclasses.replace(m, counts={"train": n, "val": m.counts["val"]}, shards=shards), out)
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(prepared: str, world_size: int = 4, batch: int = 16) -> dict:
    """RSS growth (bytes) of building the train dataset and iterating one epoch as rank 0 of ``world_size``
    (global batch ``batch``, raised to ``world_size`` when smaller)."""
    import torch

    from sdm.data.loader import PreparedDataset
    from sdm.train.data_order import DataOrder, local_positions, step_batches

    torch.set_num_threads(1)
    base = _rss()
    ds = PreparedDataset(prepared, "train", augment=True, shuffle=False)
    built = peak = _rss()
    batch = max(batch, world_size)
    order = DataOrder(len(ds), batch, 0, "pretrain")
    items = 0
    for b in step_batches(ds, order, 0, order.steps_per_epoch, local_positions(batch, 0, world_size)):
        items += len(b["id"])
        peak = max(peak, _rss())
    return {"items": len(ds), "rank_items": items, "built": built - base, "peak": peak - base}


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], *map(int, sys.argv[2:]))))
