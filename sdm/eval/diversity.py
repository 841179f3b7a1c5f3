"""Sample diversity: how different the R samples generated for one label map are.

``feature_diversity`` is the mean pairwise Euclidean distance between the
unit-normalised evaluation-segmenter features of the R samples of a label map,
averaged over label maps (0 = identical samples; at most 2). It is reported
under its own name: it is not LPIPS. LPIPS needs a VGG/AlexNet backbone from
torchvision, which cannot be installed beside our torch, so it is reported as
skipped with :func:`lpips_skip_reason`.
"""

from __future__ import annotations

import numpy as np

from sdm.config import Config


def feature_diversity(features: np.ndarray) -> float:
    """features [N, R, D] (R samples for each of N label maps, R >= 2) -> mean pairwise distance."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 3 or feats.shape[1] < 2:
        raise ValueError(f"need features [N, R, D] with R >= 2 samples per label map, got shape {feats.shape}")
    unit = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    r = feats.shape[1]
    i, j = np.triu_indices(r, k=1)
    dists = np.linalg.norm(unit[:, i] - unit[:, j], axis=-1)  # [N, R(R-1)/2]
    return float(dists.mean())


def lpips_skip_reason(config: Config) -> str:
    where = f" (evaluate.lpips_weights = {config.evaluate.lpips_weights})" if config.evaluate.lpips_weights else ""
    return (
        "LPIPS needs an ImageNet VGG/AlexNet backbone from torchvision, which cannot be installed beside this "
        f"torch{where}; feature_diversity (mean pairwise segmenter-feature distance) is reported instead"
    )
