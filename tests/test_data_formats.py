"""Each real dataset layout, prepared from a tiny fixture: labels bit-exact after the Parquet round trip."""

from __future__ import annotations

import numpy as np
import pytest
from _data_fixtures import (
    CELEBA_PARTS,
    make_ade20k,
    make_celebamask_hq,
    make_cityscapes,
    make_coco_stuff,
    make_folder,
)
from PIL import Image

from sdm.data.formats import FORMATS, FormatError, get_format, load_classes
from sdm.data.loader import PreparedDataset
from sdm.data.manifest import read_manifest
from sdm.data.prepare import prepare


def _items(prepared, split):
    return {item["id"]: item for item in PreparedDataset(prepared, split)}


def _image(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_registry_class_lists():
    sizes = {name: load_classes(f, "unused").num_classes for name, f in FORMATS.items() if f.classes}
    assert sizes == {"ade20k": 151, "cityscapes": 35, "celebamask-hq": 19, "coco-stuff": 183}
    assert load_classes(get_format("celebamask-hq"), "unused").names == CELEBA_PARTS
    city = load_classes(get_format("cityscapes"), "unused")
    assert city.names[7] == "road" and city.palette[7] == [128, 64, 128] and city.names[26] == "car"
    coco = load_classes(get_format("coco-stuff"), "unused").names
    assert coco[0] == "person" and coco[181] == "wood" and coco[182] == "unlabeled"
    with pytest.raises(FormatError, match="unknown data format 'pascal'.*ade20k"):
        get_format("pascal")


def test_folder(tmp_path):
    expected = make_folder(tmp_path / "src", n=10)
    m = prepare("folder", tmp_path / "src", tmp_path / "out", [16, 16], val_fraction=0.3, split_seed=1)
    assert m.num_classes == 5 and m.has_instances and m.counts == {"train": 7, "val": 3}
    got = {**_items(tmp_path / "out", "train"), **_items(tmp_path / "out", "val")}
    assert set(got) == set(expected)
    for stem, label in expected.items():
        assert np.array_equal(got[stem]["label"].numpy(), label)
        assert np.array_equal(got[stem]["instance"].numpy(), label * 1000 + 7)
        ext = "jpg" if int(stem[-2:]) % 2 else "png"
        image = _image(tmp_path / "src" / "images" / f"{stem}.{ext}")
        assert np.array_equal(((got[stem]["image"].numpy() + 1) * 127.5).round().transpose(1, 2, 0), image)


def test_folder_split_is_reproducible_and_seeded(tmp_path):
    make_folder(tmp_path / "src", n=10, instances=False)
    val = []
    for seed, out in ((1, "a"), (1, "b"), (2, "c")):
        prepare("folder", tmp_path / "src", tmp_path / out, [16, 16], val_fraction=0.3, split_seed=seed)
        val.append(set(PreparedDataset(tmp_path / out, "val").ids))
        assert not read_manifest(tmp_path / out).has_instances
    assert val[0] == val[1] and val[0] != val[2] and all(len(v) == 3 for v in val)
    # Same inputs and parameters: byte-identical shards (so the DVC hash is the data's identity).
    a, b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [s["sha256"] for s in a.shards] == [s["sha256"] for s in b.shards]
    assert a.source_fingerprint == b.source_fingerprint


def test_ade20k(tmp_path):
    expected = make_ade20k(tmp_path / "ADEChallengeData2016")
    m = prepare("ade20k", tmp_path / "ADEChallengeData2016", tmp_path / "out", [16, 16])
    assert m.num_classes == 151 and not m.has_instances and m.counts == {"train": 3, "val": 2}
    assert m.params["split_rule"] == "official"
    for split in ("train", "val"):
        got = _items(tmp_path / "out", split)
        want = {k: v[1] for k, v in expected.items() if v[0] == split}
        assert set(got) == set(want)
        for stem, label in want.items():  # label - 1, and 0 -> 150
            assert np.array_equal(got[stem]["label"].numpy(), label)


def test_cityscapes(tmp_path):
    expected = make_cityscapes(tmp_path / "cityscapes")
    m = prepare("cityscapes", tmp_path / "cityscapes", tmp_path / "out", [16, 16])
    assert m.num_classes == 35 and m.has_instances and m.counts == {"train": 2, "val": 1}
    for split in ("train", "val"):
        got = _items(tmp_path / "out", split)
        assert set(got) == {k for k, v in expected.items() if v[0] == split}
        for stem, item in got.items():
            _, label, inst = expected[stem]
            assert np.array_equal(item["label"].numpy(), label)
            assert np.array_equal(item["instance"].numpy(), inst)  # 16-bit ids such as 26001 survive


def test_cityscapes_resizes_to_a_wide_shape_with_nearest_labels(tmp_path):
    expected = make_cityscapes(tmp_path / "cityscapes", size=16)
    prepare("cityscapes", tmp_path / "cityscapes", tmp_path / "out", [8, 16])
    for stem, item in _items(tmp_path / "out", "train").items():
        assert item["image"].shape == (3, 8, 16) and item["label"].shape == (8, 16)
        # Labels are 4x4 blocks, so nearest 2x downscaling of the rows is exact.
        label = expected[stem][1]
        assert np.array_equal(item["label"].numpy(), label[::2])


def test_celebamask_hq_merges_parts_in_the_standard_order(tmp_path):
    expected = make_celebamask_hq(tmp_path / "CelebAMask-HQ", size=16)
    m = prepare("celebamask-hq", tmp_path / "CelebAMask-HQ", tmp_path / "out", [16, 16], val_fraction=0.25)
    assert m.num_classes == 19 and m.class_names[13] == "hair" and m.counts == {"train": 3, "val": 1}
    got = {**_items(tmp_path / "out", "train"), **_items(tmp_path / "out", "val")}
    assert set(got) == set(expected) == {"0", "1", "2001", "2002"}
    for key, label in expected.items():
        assert np.array_equal(got[key]["label"].numpy(), label)
        assert len(np.unique(label)) >= 3  # overlapping parts really were merged
        # Images (1024 px in the release; 2x the masks) are resized to the prepared size.
        assert got[key]["image"].shape == (3, 16, 16)


def test_coco_stuff(tmp_path):
    expected = make_coco_stuff(tmp_path / "coco")
    m = prepare("coco-stuff", tmp_path / "coco", tmp_path / "out", [16, 16])
    assert m.num_classes == 183 and m.has_instances and m.counts == {"train": 2, "val": 2}
    for split in ("train", "val"):
        got = _items(tmp_path / "out", split)
        assert set(got) == {k for k, v in expected.items() if v[0] == split}
        for stem, item in got.items():
            _, label, inst = expected[stem]
            assert np.array_equal(item["label"].numpy(), label)  # 255 -> 182
            assert np.array_equal(item["instance"].numpy(), inst)


def test_coco_stuff_without_instance_maps(tmp_path):
    make_coco_stuff(tmp_path / "coco", with_instances=False)
    m = prepare("coco-stuff", tmp_path / "coco", tmp_path / "out", [16, 16])
    assert not m.has_instances
    assert "instance" not in PreparedDataset(tmp_path / "out", "val")[0]
