"""FID when weights are there: real statistics cached per data key, a number for generated images.

Random weights stand in for the real file (not in the repository): this checks
the plumbing (features, statistics, cache, Frechet distance), not FID values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdm.eval.fid import real_statistics
from sdm.eval.inception import FIDInceptionV3
from sdm.eval.scoring import RealReference, score_samples
from sdm.eval.segmenter import EvalSegNet, Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_real_statistics_cache_and_fid(inception: FIDInceptionV3, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0" * 10)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    kw = {"data_key": "manifest-abc", "split": "val", "ids": ["a", "b"], "weights_path": weights}
    mu, sigma, cached = real_statistics(inception, real, **kw)
    assert not cached and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    mu2, sigma2, cached2 = real_statistics(inception, real, **kw)
    assert cached2 and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    assert not real_statistics(inception, real, **{**kw, "ids": ["a", "c"]})[2]  # another image set

    labels = rng.integers(0, 4, (2, 32, 32))
    seg = Segmenter(EvalSegNet(4, width=8).eval(), 4, "test", "test", {})
    ref = RealReference(real, labels, seg.predict(real)[1], (mu, sigma), None)
    same, skipped, _ = score_samples(real[None], ref, seg, inception, min_fid_samples=2)
    assert "fid" not in skipped and same["fid"] == pytest.approx(0.0, abs=1e-6 * np.trace(sigma))
    other = rng.integers(0, 128, (1, 2, 32, 32, 3), dtype=np.uint8)
    different, _, _ = score_samples(other, ref, seg, inception, min_fid_samples=2)
    assert different["fid"] > 1e-3 * np.trace(sigma)
    few, skipped, _ = score_samples(other, ref, seg, inception, min_fid_samples=3)
    assert "fid" not in few and "only 2 images (< evaluate.min_fid_samples = 3)" in skipped["fid"]
