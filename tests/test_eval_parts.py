"""Evaluation pieces that need no dataset: segmenter network and loaders, diversity, sweep specs, reports."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdm.eval.scoring import feature_diversity
from sdm.eval.segmenter import EvalSegNet, SegmenterError, load_torchscript_segmenter
from sdm.eval.segmenter_cache import load_segmenter, load_segmenter_dir, save_segmenter
from sdm.eval.sweep import SweepSpecError, format_scale, parse_pairs, parse_scales


def test_segnet_shapes_any_size() -> None:
    net = EvalSegNet(num_classes=5, width=8).eval()
    for h, w in ((32, 32), (30, 18)):
        logits, feats = net.forward_features(torch.randn(2, 3, h, w))
        assert logits.shape == (2, 5, h, w) and feats.shape == (2, net.feature_dim) == (2, 32)


def test_segmenter_dir_roundtrip_and_checks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = EvalSegNet(num_classes=4, width=8).eval()
    d = save_segmenter(tmp_path / "seg", net, {"arch": "sdm-evalsegnet-v1", "num_classes": 4, "width": 8})
    seg = load_segmenter(d, num_classes=4)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pred, feats = seg.predict(images, batch_size=2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        logits, ref_feats = net.forward_features(x)
    assert np.array_equal(pred, logits.argmax(1).numpy()) and np.allclose(feats, ref_feats.numpy(), atol=1e-6)
    with pytest.raises(SegmenterError, match="4 classes but the data has 7"):
        load_segmenter(d, num_classes=7)
    with pytest.raises(SegmenterError, match="not a segmenter directory"):
        load_segmenter_dir(tmp_path)
    with pytest.raises(SegmenterError, match="no such segmenter"):
        load_segmenter(tmp_path / "missing", num_classes=4)
    with pytest.raises(SegmenterError, match="uint8 images"):
        seg.predict(images.astype(np.float32))


class _LogitsOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1], x[:, 1:2]], 1)


class _WithFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x[:, :1], -x[:, :1], x[:, 1:2]], 1), x.mean(dim=(2, 3))


def test_torchscript_segmenter(tmp_path: Path) -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[0, ..., 0] = 255  # red: class 0 wins
    images[1, ..., 0], images[1, ..., 1] = 128, 255  # mid red (~0 for classes 0, 1), full green: class 2
    path = tmp_path / "logits.pt"
    torch.jit.script(_LogitsOnly()).save(str(path))
    seg = load_torchscript_segmenter(path, num_classes=3)
    pred, feats = seg.predict(images)
    assert (pred[0] == 0).all() and (pred[1] == 2).all()
    assert feats.shape == (2, 3) and np.allclose(feats.sum(1), 1.0)  # pooled softmax probabilities
    assert "softmax" in seg.feature_space
    path2 = tmp_path / "feats.pt"
    torch.jit.script(_WithFeatures()).save(str(path2))
    _, feats2 = load_segmenter(path2, num_classes=3).predict(images)
    assert feats2.shape == (2, 3) and np.allclose(feats2[0], [1.0, -1.0, -1.0], atol=1e-6)
    with pytest.raises(SegmenterError, match="predicts 3 classes but the data has 5"):
        load_segmenter(path2, num_classes=5).predict(images)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(SegmenterError, match="not a TorchScript module"):
        load_segmenter(bad, num_classes=3)


def test_feature_diversity() -> None:
    same = np.ones((4, 3, 8))
    assert feature_diversity(same) == pytest.approx(0.0)
    # Two orthogonal unit directions per label map: distance sqrt(2); scale does not matter.
    a = np.zeros((2, 2, 3))
    a[:, 0, 0], a[:, 1, 1] = 5.0, 0.1
    assert feature_diversity(a) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="R >= 2"):
        feature_diversity(np.ones((4, 1, 8)))


def test_sweep_specs() -> None:
    assert parse_scales("1.0, 1.5,2") == [1.0, 1.5, 2.0]
    assert [format_scale(s) for s in (1.0, 1.5, 2, 1.25)] == ["1.0", "1.5", "2.0", "1.25"]
    assert parse_pairs(["ddpm:1000,ddim:50", "dpmpp:25", "ddim:50"]) == [("ddpm", 1000), ("ddim", 50), ("dpmpp", 25)]
    for bad in ("euler:10", "ddim", "ddim:0", "ddim:x"):
        with pytest.raises(SweepSpecError, match="sampler:steps"):
            parse_pairs([bad])
    with pytest.raises(SweepSpecError, match="not a number"):
        parse_scales("1.5,high")
    with pytest.raises(SweepSpecError, match="negative"):
        parse_scales("-1")
