"""Every bad-input kind: its own error naming the file; fail writes nothing, skip leaves it out and lists it."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from _data_fixtures import make_celebamask_hq, make_cityscapes, make_folder, save
from PIL import Image

from sdm.data.loader import PreparedDataset
from sdm.data.manifest import read_manifest
from sdm.data.prepare import prepare
from sdm.data.problems import DataProblemsError
from sdm.data.validate import validate
from sdm.locks import LOCK_SUFFIX


def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _break_missing_label(src):
    (src / "labels" / "img01.png").unlink()
    return "img01", "missing_label", "no label for this image"


def _break_missing_image(src):
    save(src / "labels" / "orphan.png", np.zeros((16, 16)))
    return "orphan", "missing_image", "a label without an image"


def _break_unreadable_image(src):
    (src / "images" / "img02.png").write_bytes(b"this is not an image")
    return "img02", "unreadable_image", "cannot decode"


def _break_truncated_image(src):
    data = (src / "images" / "img03.jpg").read_bytes()
    (src / "images" / "img03.jpg").write_bytes(data[: len(data) // 2])
    return "img03", "unreadable_image", "cannot decode"


def _break_truncated_label(src):
    data = _png_bytes(np.random.default_rng(0).integers(0, 5, (16, 16), dtype=np.uint8))
    (src / "labels" / "img04.png").write_bytes(data[: len(data) - 30])
    return "img04", "unreadable_label", "cannot decode"


def _break_size_mismatch(src):
    save(src / "labels" / "img00.png", np.zeros((12, 16)))
    return "img00", "size_mismatch", "label is 16x12 but the image img00.png is 16x16"


def _break_out_of_range(src):
    label = np.zeros((16, 16), np.uint8)
    label[:5, 0] = 7
    label[10, :3] = 200
    save(src / "labels" / "img05.png", label)
    return "img05", "label_out_of_range", "outside the 5 classes of 'folder': 7 (5 px), 200 (3 px)"


def _break_multichannel(src):
    save(src / "labels" / "img01.png", np.zeros((16, 16, 3)), mode="RGB")
    return "img01", "multichannel_label", "multi-channel label (mode RGB, 3 channels)"


def _break_duplicate_stem(src):
    shutil.copy(src / "images" / "img02.png", src / "images" / "img02.jpg")
    return "img02", "duplicate_stem", "2 image files share the stem 'img02'"


def _break_missing_instance(src):
    (src / "instances" / "img03.png").unlink()
    return "img03", "missing_instance", "no instance map for this image"


BREAKERS = [_break_missing_label, _break_missing_image, _break_unreadable_image, _break_truncated_image,
            _break_truncated_label, _break_size_mismatch, _break_out_of_range, _break_multichannel,
            _break_duplicate_stem, _break_missing_instance]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_input_fail_and_skip(tmp_path, breaker):
    src = tmp_path / "src"
    expected = make_folder(src, n=6)
    bad_id, kind, text = breaker(src)
    out = tmp_path / "prepared"

    report = validate("folder", src)
    assert [p.kind for p in report.problems] == [kind]
    assert text in report.problems[0].message and bad_id in str(report.problems[0].path)

    with pytest.raises(DataProblemsError) as e:
        prepare("folder", src, out, [16, 16], on_error="fail")
    assert kind in str(e.value) and text in str(e.value) and "nothing was written" in str(e.value)
    # No output and no temp folder left (the lock file beside the output stays by design: sdm/locks.py).
    left = [p for p in tmp_path.iterdir() if not p.name.endswith(LOCK_SUFFIX)]
    assert not out.exists() and left == [src]

    m = prepare("folder", src, out, [16, 16], on_error="skip", val_fraction=0.0)
    assert [(s["kind"], s["id"]) for s in m.skipped] == [(kind, bad_id)]
    ids = set(PreparedDataset(out, "train").ids)
    good = set(expected) - {bad_id}
    assert ids == good and m.counts["train"] == len(good)
    assert read_manifest(out).skipped == m.skipped


def test_every_problem_is_reported_at_once(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=6)
    _break_missing_label(src)
    _break_out_of_range(src)
    _break_unreadable_image(src)
    with pytest.raises(DataProblemsError) as e:
        prepare("folder", src, tmp_path / "out", [16, 16])
    assert sorted(p.kind for p in e.value.problems) == ["label_out_of_range", "missing_label", "unreadable_image"]
    assert "3 problem(s)" in str(e.value)


def test_fail_keeps_an_existing_output_untouched(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=4)
    out = tmp_path / "out"
    first = prepare("folder", src, out, [16, 16])
    _break_multichannel(src)
    with pytest.raises(DataProblemsError):
        prepare("folder", src, out, [16, 16])
    assert read_manifest(out) == first


def test_missing_class_list_and_source(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=2)
    (src / "classes.json").unlink()
    with pytest.raises(ValueError, match=r"classes\.json: missing.*class names"):
        prepare("folder", src, tmp_path / "out", [16, 16])
    (src / "classes.json").write_text(json.dumps({"names": ["a", "b"], "palette": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="one \\[r, g, b\\]"):
        prepare("folder", src, tmp_path / "out", [16, 16])
    with pytest.raises(DataProblemsError, match="source folder does not exist"):
        prepare("folder", tmp_path / "nowhere", tmp_path / "out", [16, 16], on_error="skip")
    assert not (tmp_path / "out").exists()


def test_release_specific_problems(tmp_path):
    city = tmp_path / "cityscapes"
    make_cityscapes(city)
    (city / "gtFine" / "train" / "bonn" / "bonn_000000_000019_gtFine_instanceIds.png").unlink()
    shutil.rmtree(city / "leftImg8bit" / "val")
    kinds = sorted(p.kind for p in validate("cityscapes", city).problems)
    assert kinds == ["missing_directory", "missing_instance"]
    with pytest.raises(DataProblemsError, match="leftImg8bit/val: no such folder"):
        prepare("cityscapes", city, tmp_path / "out", [16, 16], on_error="skip")  # not skippable

    celeba = tmp_path / "celeba"
    make_celebamask_hq(celeba, ids=(0, 1))
    save(celeba / "CelebAMask-HQ-mask-anno" / "0" / "00001_moustache.png", np.zeros((16, 16)))
    save(celeba / "CelebAMask-HQ-mask-anno" / "0" / "00000_neck.png", np.zeros((8, 8)))
    problems = validate("celebamask-hq", celeba).problems
    assert sorted(p.kind for p in problems) == ["size_mismatch", "unknown_part"]
    m = prepare("celebamask-hq", celeba, tmp_path / "celeba-out", [16, 16], on_error="skip", val_fraction=0)
    assert m.counts["train"] == 1 and {s["kind"] for s in m.skipped} == {"size_mismatch", "unknown_part"}


def test_instances_in_one_split_only_are_required_in_all(tmp_path):
    from _data_fixtures import make_coco_stuff

    coco = tmp_path / "coco"
    make_coco_stuff(coco)
    shutil.rmtree(coco / "instancemaps_trainval2017" / "val2017")
    problems = validate("coco-stuff", coco).problems
    assert [p.kind for p in problems] == ["missing_instance", "missing_instance"]
    m = prepare("coco-stuff", coco, tmp_path / "out", [16, 16], on_error="skip")
    assert m.has_instances and m.counts == {"train": 2, "val": 0}


def test_16_bit_label_values_are_reported(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=2, instances=False)
    label = np.zeros((16, 16), np.uint16)
    label[0, 0] = 65535
    label[0, 1:3] = 300
    save(src / "labels" / "img00.png", label, mode="I;16")
    (problem,) = validate("folder", src).problems
    assert problem.kind == "label_out_of_range" and "300 (2 px), 65535 (1 px)" in problem.message
