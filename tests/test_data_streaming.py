"""Streaming sharded reading: items equal the in-memory loader's (recorded), any row-group layout gives the same
items, ranks read disjoint rows covering the split and only their row groups, memory is flat in the split size."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _data_streaming import replicate

from sdm.data.loader import PreparedDataset
from sdm.data.prepare import prepare
from sdm.data.stream import ShardRows
from sdm.data.synthetic import synthesize

HERE = Path(__file__).resolve().parent

# sha256[:16] of (image, label, instance, id) of every item, recorded with the loader that held the whole split
# in memory (before streaming), on the dataset of the `prepared` fixture, for
# (shuffle, augment, seed, epoch, rank, world_size).
RECORDED = {
    (False, True, 3, 7, 0, 1): [
        "3067e10adf1a7d20", "5c5de719dda3b274", "2bfd32b6bedd5d66", "4b0e9e2133f23ff9", "07bfbd94e848c139",
        "8d84259a3958e8bf", "045e424cbb47074c", "66520d07efa55bfc", "f4dde4f3aa80f040", "923283a0376b3932",
        "ff17b181454e9f55", "0514415355f9a5b6", "bb4f52b260078942", "53e2c223a84c9bfb", "58fd38a7524161f0",
        "bffbd8bbb168cb4f", "31b6710f072523c8", "ff1f320de0f382e8", "31046ba009e711ce", "92274b5b518d443a",
        "7c2871e348e9838e", "81e2f2faf6a1eec8", "3ceddfaa8798080f", "37c88eedc761853e"],
    (True, True, 5, 2, 1, 2): [
        "21b26e7e914f2626", "b42e6679c5de6805", "81d6b94eb87866cd", "02f0b728c9a30898", "f120883b02732c57",
        "83d8c98563bda56a", "827f0872cad01fbf", "58b4e7ab33998dca", "295814cb14947425", "ebd559d42d6c6120",
        "4c7e99a299a2d7ba", "b2d86fc7a1749e06"],
    (False, False, 0, 0, 0, 1): [
        "22267259f8636d43", "41b99edd635207c7", "cd0be0f2e7b7d7cc", "58b4e7ab33998dca", "43dffd15f4677d2a",
        "57c3ac1f202f9763", "045e424cbb47074c", "eec33a9754acf005", "a4452c8540da1131", "f3a1b77be81a0fb1",
        "96bb4c8882de8493", "da0ab0ba7816b773", "6fa737848f236ecb", "19fad865dd6b610f", "58fd38a7524161f0",
        "6613afb14378018d", "31b6710f072523c8", "322c89c73d3afa63", "a54bfbae4e8085b1", "55656abc228907c3",
        "0db08c9fa66f9aeb", "93487b27b281dd57", "2e8600f8834c5486", "b15e02c3962839db"],
}


def digest(item: dict) -> str:
    h = hashlib.sha256()
    for k in ("image", "label", "instance"):
        h.update(item[k].numpy().tobytes())
    h.update(item["id"].encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    synthesize(root / "raw", n=30, size=48, seed=0, workers=1)
    prepare("folder", root / "raw", root / "prepared", [32, 32], val_fraction=0.2, split_seed=0, shard_mb=1,
            workers=1)
    return root / "prepared"


@pytest.fixture(scope="module")
def regrouped(prepared, tmp_path_factory):
    """The same 24 train rows in several shards of several small row groups each."""
    out = replicate(prepared, tmp_path_factory.mktemp("regrouped") / "prepared", 24, shard_kib=16, group_kib=6)
    return out


@pytest.mark.parametrize("key", list(RECORDED))
def test_items_equal_the_in_memory_loaders(prepared, key):
    shuffle, augment, seed, epoch, rank, world = key
    ds = PreparedDataset(prepared, "train", augment=augment, shuffle=shuffle, seed=seed, rank=rank, world_size=world)
    ds.set_epoch(epoch)
    assert [digest(ds[i]) for i in range(len(ds))] == RECORDED[key]


def test_any_row_group_layout_gives_the_same_items(prepared, regrouped):
    store = PreparedDataset(regrouped, "train")._store
    assert len(store.paths) >= 2 and len(store._groups) >= 6  # the layout under test really is many groups
    a = PreparedDataset(prepared, "train", augment=True, shuffle=True, seed=9)
    b = PreparedDataset(regrouped, "train", augment=True, shuffle=True, seed=9, cache_groups=1)
    for ds in (a, b):
        ds.set_epoch(4)
    for i in reversed(range(len(a))):  # backwards and shuffled: every access a group switch
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert torch.equal(x["instance"], y["instance"])
        assert y["id"] == f"item_{a._rows[i]:06d}"  # the same row (the copy renamed the ids)


def test_ranks_read_disjoint_rows_covering_the_split_and_only_their_row_groups(regrouped):
    ranks = [PreparedDataset(regrouped, "train", rank=r, world_size=2, shuffle=True, seed=1) for r in (0, 1)]
    rows = [set(ds._rows.tolist()) for ds in ranks]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(24))
    for ds, mine in zip(ranks, rows, strict=True):
        read: list[int] = []
        original = ds._store._group
        ds._store._group = lambda k, _o=original, _r=read: (_r.append(k), _o(k))[1]  # type: ignore[method-assign]
        got = [ds[i]["id"] for i in range(len(ds))]
        assert got == ds.ids
        assert {ds._store.locate(r)[0] for r in mine} == set(read)


def test_shard_rows_bounds_its_cache_and_checks_rows(regrouped):
    store = ShardRows(sorted(regrouped.glob("train-*.parquet")), ["image"], cache_groups=2)
    for r in range(len(store)):
        assert store.cell("image", r)[:8].tobytes() == b"\x89PNG\r\n\x1a\n"
        assert len(store._cache) <= 2
    with pytest.raises(IndexError, match="row 24 out of range"):
        store.cell("image", 24)
    with pytest.raises(ValueError, match="cache_groups"):
        ShardRows(store.paths, ["image"], cache_groups=0)


@pytest.mark.slow
def test_memory_per_worker_does_not_grow_with_the_dataset(tmp_path):
    """1k vs 5k items at 96 px (photo-sized PNGs), each measured in its own process: the growth stays within
    12 MiB while the shards grow by ~100 MiB (the in-memory loader grew by ~5x the shards)."""
    synthesize(tmp_path / "raw", n=20, size=96, seed=0, workers=1)
    prepare("folder", tmp_path / "raw", tmp_path / "base", [96, 96], val_fraction=0.1, split_seed=0, workers=1)
    peaks, sizes = {}, {}
    for n in (1000, 5000):
        # 1 MiB row groups: the memory held is a couple of them, whatever n is.
        d = replicate(tmp_path / "base", tmp_path / f"p{n}", n, group_kib=1024, noise=True)
        sizes[n] = sum(p.stat().st_size for p in d.glob("train-*.parquet"))
        out = subprocess.run([sys.executable, str(HERE / "_data_streaming.py"), str(d), "16"], capture_output=True,
                             text=True, timeout=120, check=True)
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    grown = sizes[5000] - sizes[1000]
    assert grown > 3 * (12 << 20), f"the larger dataset must be clearly larger: {grown >> 20} MiB more"
    assert peaks[5000] - peaks[1000] < 12 << 20, (peaks, sizes)
