"""Frechet distance against a float64 scipy reference; mIoU on a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from sdm.eval.frechet import FeatureStatsError, feature_statistics, frechet_distance, frechet_distance_from_features
from sdm.eval.miou import confusion_matrix, mean_iou, per_class_iou


def _scipy_reference(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """The textbook computation (as in pytorch-fid), in float64."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_scipy_reference() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 16))
    fake = rng.normal(loc=0.3, scale=1.4, size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5
    ours = frechet_distance_from_features(real, fake)
    ref = _scipy_reference(real, fake)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-8)


def test_frechet_float32_input_is_computed_in_float64() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.1, 1.1, size=(200, 8))
    assert frechet_distance_from_features(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(
        _scipy_reference(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)), rel=1e-8
    )


def test_frechet_identical_sets_is_zero() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(100, 32))
    assert frechet_distance_from_features(a, a.copy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_singular_covariance_stays_finite() -> None:
    # Fewer samples than dimensions: both covariances are rank-deficient.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 64)), rng.normal(0.5, 1.0, size=(12, 64))
    ours = frechet_distance_from_features(a, b)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(_scipy_reference(a, b), rel=1e-3)


def test_frechet_mean_shift_only() -> None:
    sigma = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(np.zeros(3), sigma, np.array([1.0, 2.0, 2.0]), sigma) == pytest.approx(9.0)


def test_feature_statistics_rejects_bad_input() -> None:
    with pytest.raises(FeatureStatsError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(FeatureStatsError, match=r"\[N, D\]"):
        feature_statistics(np.zeros(4))
    with pytest.raises(FeatureStatsError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(FeatureStatsError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_miou_hand_computed() -> None:
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = per_class_iou(conf)
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])  # absent from both: excluded from the mean
    assert mean_iou(conf) == pytest.approx(0.5)


def test_miou_ignore_index_and_range_errors() -> None:
    target = np.array([0, 0, 1, 255])
    pred = np.array([0, 1, 1, 3])
    conf = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    assert conf.sum() == 3
    assert mean_iou(conf) == pytest.approx((1 / 2 + 1 / 2) / 2)
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 4\)"):
        confusion_matrix(pred, target, num_classes=4)
    with pytest.raises(ValueError, match="prediction labels"):
        confusion_matrix(np.array([7]), np.array([0]), num_classes=4)
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros(3), np.zeros(4), num_classes=4)


def test_miou_false_positive_only_class_counts() -> None:
    # Class 2 only predicted, never in the target: IoU 0, and it lowers the mean.
    conf = confusion_matrix(np.array([0, 2]), np.array([0, 0]), num_classes=3)
    assert per_class_iou(conf)[2] == 0.0
    assert mean_iou(conf) == pytest.approx(0.25)
