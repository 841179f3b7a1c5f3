"""The Frechet distance between two Gaussians fitted to feature sets (FID, FSD).

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Computed in float64. ``Tr((S1 S2)^(1/2))`` is taken from the eigenvalues of the
symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``):
unlike a general ``sqrtm`` of the non-symmetric product, this never produces
complex parts and stays finite for singular covariances (fewer samples than
feature dimensions), where ``sqrtm`` needs the usual ``eps * I`` offset.
"""

from __future__ import annotations

import numpy as np

from sdm.errors import InputError


class FeatureStatsError(InputError):
    """Features that cannot give a mean and covariance (too few rows, NaNs, wrong shape)."""


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise FeatureStatsError(f"features must be [N, D], got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise FeatureStatsError(f"need at least 2 feature rows for a covariance, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise FeatureStatsError("features contain NaN or inf")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues (rounding) clip to 0."""
    sym = (sigma + sigma.T) / 2
    w, v = np.linalg.eigh(sym)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu: [D], sigma: [D, D] (any float dtype; computed in float64). Returns a
    float >= 0 (tiny negative rounding results are clipped to 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FeatureStatsError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to features real [N1, D] and fake [N2, D].

    With fewer rows than dimensions (N1, N2 < D) it is computed exactly without any
    D x D matrix: with A = (X - mean) / sqrt(N - 1) [N, D], S = A^T A and the
    non-zero eigenvalues of S1 S2 are the squared singular values of A1 A2^T
    [N1, N2], so Tr((S1 S2)^(1/2)) is the nuclear norm of A1 A2^T.
    """
    a1, a2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if a1.ndim != 2 or a2.ndim != 2 or a1.shape[1] != a2.shape[1] or max(len(a1), len(a2)) >= a1.shape[1]:
        return frechet_distance(*feature_statistics(a1), *feature_statistics(a2))
    if min(len(a1), len(a2)) < 2:
        raise FeatureStatsError(f"need at least 2 feature rows for a covariance, got {len(a1)} and {len(a2)}")
    if not (np.isfinite(a1).all() and np.isfinite(a2).all()):
        raise FeatureStatsError("features contain NaN or inf")
    mu1, mu2 = a1.mean(0), a2.mean(0)
    c1, c2 = (a1 - mu1) / np.sqrt(len(a1) - 1), (a2 - mu2) / np.sqrt(len(a2) - 1)
    tr_covmean = float(np.linalg.svd(c1 @ c2.T, compute_uv=False).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + (c1 * c1).sum() + (c2 * c2).sum() - 2.0 * tr_covmean)
    return max(value, 0.0)
