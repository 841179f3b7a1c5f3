"""FID and KID from features with torchmetrics, checked against independent arithmetic.

FID: torchmetrics' FrechetInceptionDistance against our eigen-decomposition Frechet distance (and its exact
low-rank path for fewer rows than dimensions). KID: against the unbiased MMD^2 with the cubic polynomial
kernel written out here, on the same subsets; the subset rule; reproducibility; bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdm.eval.distances import fid_from_features, kid_from_features, kid_subset_size
from sdm.eval.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def test_torchmetrics_fid_equals_our_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 24))
    fake = rng.normal(0.2, 1.3, size=(250, 24)) @ rng.normal(size=(24, 24)) * 0.4
    ours = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    assert ours > 1.0 and fid_from_features(real, fake) == pytest.approx(ours, rel=1e-6)
    assert fid_from_features(real, real.copy()) == pytest.approx(0.0, abs=1e-6)


def test_low_rank_frechet_path_is_exact() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 40)), rng.normal(0.3, 1.2, size=(9, 40))
    full = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    # the full path takes sqrt of ~1e-15 rounding eigenvalues of the singular product: agreement to 1e-6
    assert frechet_distance_from_features(a, b) == pytest.approx(full, rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(full, rel=1e-6)


def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m = len(x)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_kid_is_the_unbiased_polynomial_mmd() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 16)), rng.normal(0.5, 1.0, size=(20, 16))
    mean, std = kid_from_features(x, y, subsets=3, subset_size=20)  # every subset is the whole set
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)
    assert mean > 0.05


def test_kid_same_distribution_is_near_zero_and_reproducible() -> None:
    rng = np.random.default_rng(3)
    x, y, z = rng.normal(size=(80, 16)), rng.normal(size=(80, 16)), rng.normal(0.4, 1.0, size=(80, 16))
    m = kid_subset_size(80, 80, 1000)
    assert m == 40
    state = torch.random.get_rng_state()
    same = kid_from_features(x, y, subsets=50, subset_size=m, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert same == kid_from_features(x, y, subsets=50, subset_size=m, seed=1)
    far = kid_from_features(x, z, subsets=50, subset_size=m, seed=1)
    assert abs(same[0]) < 3 * same[1] + 1e-3 and far[0] > 10 * max(abs(same[0]), 1e-4) and far[1] > 0
    assert kid_subset_size(5000, 3000, 1000) == 1000 and kid_subset_size(3, 9, 1000) == 1


def test_bad_feature_input_is_an_error() -> None:
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subset_size 11 must be in"):
        kid_from_features(x, x, subsets=2, subset_size=11)
    with pytest.raises(ValueError, match="at least 2 feature rows"):
        fid_from_features(x[:1], x)
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((3, 4), np.nan), x)
