"""The built-in synthetic scenes: 12 classes, instance maps, deterministic by seed, varied images."""

from __future__ import annotations

import json

import cv2
import numpy as np

from sdm.data.synthetic import CLASS_NAMES, INSTANCE_CLASSES, make_scene, render, synthesize


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_synth_writes_folder_format_deterministically(tmp_path):
    a = synthesize(tmp_path / "a", n=6, size=48, seed=3)
    b = synthesize(tmp_path / "b", n=4, size=48, seed=3)
    c = synthesize(tmp_path / "c", n=4, size=48, seed=4)
    classes = json.loads((a / "classes.json").read_text())
    assert classes["names"] == CLASS_NAMES and len(classes["names"]) == 12
    assert len(classes["palette"]) == 12 and classes["instance_classes"] == INSTANCE_CLASSES
    assert sorted(p.name for p in (a / "images").iterdir()) == [f"scene_{i:05d}.png" for i in range(6)]
    for sub in ("images", "labels", "instances"):
        # The first k scenes do not depend on n; another seed gives other scenes.
        for i in range(4):
            name = f"scene_{i:05d}.png"
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes()
        assert (a / sub / "scene_00000.png").read_bytes() != (c / sub / "scene_00000.png").read_bytes()
    label = _read(a / "labels" / "scene_00000.png")
    image = _read(a / "images" / "scene_00000.png")
    assert label.shape == (48, 48) and label.dtype == np.uint8 and label.max() < 12
    assert image.shape == (48, 48, 3)
    assert not list(tmp_path.glob(".*tmp*"))  # the temp folder was renamed into place


def test_scenes_use_every_class_and_instances_separate_objects():
    seen = np.zeros(12, np.int64)
    for i in range(60):
        label, instance = make_scene(np.random.default_rng([0, i]), 64)
        seen += np.bincount(label.ravel(), minlength=12)
        stuff = label < 7
        # Cityscapes convention: stuff carries its class id, object k of class c carries c*1000+k.
        assert np.array_equal(instance[stuff], label[stuff])
        objects = ~stuff
        assert np.array_equal(instance[objects] // 1000, label[objects])
    assert (seen > 0).all(), dict(zip(CLASS_NAMES, seen, strict=True))
    # Regions are large: on average even the rarest class covers > 0.5% of pixels.
    assert (seen / seen.sum()).min() > 0.005


def test_one_label_map_admits_many_images():
    label, instance = make_scene(np.random.default_rng([0, 1]), 64)
    a = render(label, instance, np.random.default_rng(1)).astype(np.float32)
    b = render(label, instance, np.random.default_rng(2)).astype(np.float32)
    assert np.abs(a - b).mean() > 5.0  # lighting, hue and texture differ
    # ... while each class keeps a recognisable colour: the per-class mean colours of
    # two renders are closer to each other than to any other class's mean colour.
    means = [np.stack([img[label == c].mean(0) for c in np.unique(label)]) for img in (a, b)]
    dist = np.linalg.norm(means[0][:, None] - means[1][None], axis=-1)
    assert (dist.argmin(axis=1) == np.arange(len(dist))).mean() >= 0.75


def test_classes_stay_visible_at_32_px():
    """Downscaled to 32x32 (the toy size), most pixels of every present class survive nearest resizing."""
    for i in range(20):
        label, _ = make_scene(np.random.default_rng([0, i]), 64)
        small = cv2.resize(label, (32, 32), interpolation=cv2.INTER_NEAREST)
        big = np.bincount(label.ravel(), minlength=12) / label.size
        kept = np.bincount(small.ravel(), minlength=12) / small.size
        for c in np.nonzero(big > 0.01)[0]:
            assert kept[c] > 0, (i, CLASS_NAMES[c])


def test_images_follow_the_labels_at_32_px():
    """A per-pixel Gaussian classifier on (colour, height) reads most of the label map from 32 px images."""

    def sample(seeds):
        x, y = [], []
        height = np.broadcast_to(np.linspace(-1, 1, 32)[:, None], (32, 32)).reshape(-1, 1)
        for i in seeds:
            rng = np.random.default_rng([0, i])
            label, instance = make_scene(rng, 64)
            image = cv2.resize(render(label, instance, rng), (32, 32), interpolation=cv2.INTER_AREA)
            x.append(np.concatenate([image.reshape(-1, 3) / 127.5 - 1, height], 1))
            y.append(cv2.resize(label, (32, 32), interpolation=cv2.INTER_NEAREST).ravel())
        return np.concatenate(x), np.concatenate(y)

    xt, yt = sample(range(80))
    xv, yv = sample(range(1000, 1020))
    scores = []
    for c in range(12):
        xc = xt[yt == c]
        mu, cov = xc.mean(0), np.cov(xc.T) + 1e-4 * np.eye(4)
        d = xv - mu
        scores.append(-0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
                      - 0.5 * np.linalg.slogdet(cov)[1] + np.log((yt == c).mean()))
    accuracy = (np.argmax(scores, 0) == yv).mean()
    assert accuracy > 0.75, accuracy  # 0.87 when written
