"""PreparedDataset: item dtypes/ranges, DDP rank slices, deterministic per-epoch order and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdm.data.loader import PreparedDataset
from sdm.data.manifest import ManifestError, read_manifest
from sdm.data.prepare import prepare
from sdm.data.synthetic import synthesize


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    synthesize(root / "raw", n=30, size=48, seed=0)
    prepare("folder", root / "raw", root / "prepared", [32, 32], val_fraction=0.2, split_seed=0)
    return root / "prepared"


def test_items_have_the_contract_dtypes_and_ranges(prepared):
    ds = PreparedDataset(prepared, "train")
    m = read_manifest(prepared)
    assert len(ds) == m.counts["train"] == 24 and m.counts["val"] == 6
    item = ds[0]
    assert set(item) == {"image", "label", "instance", "id"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0 and item["image"].std() > 0.05
    assert item["label"].dtype == torch.int64 and item["label"].shape == (32, 32)
    assert 0 <= item["label"].min() and item["label"].max() < 12
    assert item["instance"].dtype == torch.int64 and item["instance"].shape == (32, 32)
    assert isinstance(item["id"], str) and item["id"].startswith("scene_")
    # Without shuffling, items come in id order.
    assert ds.ids == sorted(ds.ids)


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_are_disjoint_and_cover_the_split(prepared, shuffle):
    for epoch in (0, 1):
        ranks = [PreparedDataset(prepared, "train", rank=r, world_size=2, shuffle=shuffle, seed=5) for r in (0, 1)]
        for ds in ranks:
            ds.set_epoch(epoch)
        ids = [set(ds.ids) for ds in ranks]
        assert not ids[0] & ids[1]
        assert ids[0] | ids[1] == set(PreparedDataset(prepared, "train").ids)
        assert abs(len(ranks[0]) - len(ranks[1])) <= 1
        assert [ranks[0][i]["id"] for i in range(len(ranks[0]))] == ranks[0].ids


def test_shuffle_and_augmentation_are_deterministic_per_seed_and_epoch(prepared):
    def epoch_items(seed, epoch):
        ds = PreparedDataset(prepared, "train", augment=True, seed=seed)
        ds.set_epoch(epoch)
        return ds.ids, [ds[i] for i in range(4)]

    ids_a, a = epoch_items(0, 1)
    ids_b, b = epoch_items(0, 1)
    ids_c, c = epoch_items(0, 2)
    assert ids_a == ids_b and ids_a != ids_c
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    # The same example in another epoch gets another crop/flip.
    plain = PreparedDataset(prepared, "train")
    pos = {i: n for n, i in enumerate(plain.ids)}
    other = PreparedDataset(prepared, "train", augment=True, seed=0)
    changed = 0
    for item in a:
        base = plain[pos[item["id"]]]
        assert set(item["label"].unique().tolist()) <= set(base["label"].unique().tolist())  # nearest: no new ids
        other.set_epoch(2)
        j = other.ids.index(item["id"])
        changed += not torch.equal(other[j]["image"], item["image"])
    assert changed >= 3


def test_augmented_labels_follow_the_image(prepared):
    """A flip/crop moves the label map with the image: labels stay aligned with colour regions."""
    ds = PreparedDataset(prepared, "train", augment=True, seed=1, random_crop=False)
    plain = PreparedDataset(prepared, "train")
    pos = {i: n for n, i in enumerate(plain.ids)}
    flips = 0
    for i in range(len(ds)):
        item = ds[i]
        base = plain[pos[item["id"]]]
        if torch.equal(item["label"], base["label"].flip(-1)) and not torch.equal(item["label"], base["label"]):
            assert torch.equal(item["image"], base["image"].flip(-1))
            flips += 1
        else:
            assert torch.equal(item["image"], base["image"]) and torch.equal(item["label"], base["label"])
    assert 0 < flips < len(ds)


def test_dataloader_workers_give_the_same_batches(prepared):
    ds = PreparedDataset(prepared, "train", augment=True, seed=3)
    ds.set_epoch(4)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers)
        batches.append([b["image"] for b in loader])
    for x, y in zip(*batches, strict=True):
        assert torch.equal(x, y)


def test_missing_prepared_dir_names_the_command(tmp_path):
    with pytest.raises(ManifestError, match="sdm data prepare") as e:
        PreparedDataset(tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "dvc pull" in str(e.value)


def test_bad_split_and_rank(prepared):
    with pytest.raises(ValueError, match="no split 'test'"):
        PreparedDataset(prepared, "test")
    with pytest.raises(ValueError, match="rank"):
        PreparedDataset(prepared, rank=2, world_size=2)


def test_label_frequencies_in_manifest_match_the_rows(prepared):
    m = read_manifest(prepared)
    counts = np.zeros(12)
    for item in PreparedDataset(prepared, "val"):
        counts += np.bincount(item["label"].ravel().numpy(), minlength=12)
    np.testing.assert_allclose(counts / counts.sum(), m.class_pixel_frequency["val"], atol=1e-6)
