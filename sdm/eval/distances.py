"""FID and KID between two sets of Inception features, with torchmetrics' metrics.

The arithmetic is torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance`` (their base install needs no torchvision). They are
built with ``feature=`` a module: :class:`InceptionExtractor` (our network, for
images) or :class:`PrecomputedFeatures` (the evaluation's path: features are
extracted once, batched and cached by :mod:`sdm.eval.fid`, and handed to the
metric as they are).

KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic
polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``subsets``
random subsets of ``subset_size`` images per side; its standard deviation over
those subsets is reported beside it. :func:`kid_subset_size` keeps subsets at
most half of the smaller set, so that subsets differ and the spread means
something (torchmetrics requires subset_size <= the set size).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sdm.eval.inception import FID_FEATURE_DIM, FIDInceptionV3


class PrecomputedFeatures(nn.Module):
    """``feature=`` for torchmetrics when update() is given features [N, D] that were already extracted."""

    def __init__(self, num_features: int = FID_FEATURE_DIM) -> None:
        super().__init__()
        self.num_features = num_features  # torchmetrics reads this instead of probing with a dummy image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features [N, {self.num_features}], got {tuple(features.shape)}")
        return features.double()


class InceptionExtractor(nn.Module):
    """``feature=`` for torchmetrics on images: uint8 [N, 3, H, W] -> our pool3 features float64 [N, 2048]."""

    def __init__(self, net: FIDInceptionV3) -> None:
        super().__init__()
        self.net = net
        self.num_features = FID_FEATURE_DIM

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 255.0).double()


def _as_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("features contain NaN or inf")
    return t


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between features real [N1, D] and fake [N2, D] (N1, N2 >= 2), by torchmetrics in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    r, f = _as_tensor(real), _as_tensor(fake)
    if len(r) < 2 or len(f) < 2:
        raise ValueError(f"FID needs at least 2 feature rows per side, got {len(r)} and {len(f)}")
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(r.shape[1]))
    metric.update(r, real=True)
    metric.update(f, real=False)
    return max(float(metric.compute()), 0.0)


def kid_subset_size(n_real: int, n_fake: int, configured: int) -> int:
    """min(configured, half of the smaller set): subsets that differ from each other."""
    return max(1, min(configured, min(n_real, n_fake) // 2))


def kid_from_features(real: np.ndarray, fake: np.ndarray, *, subsets: int, subset_size: int,
                      seed: int = 0) -> tuple[float, float]:
    """(KID mean, KID std over subsets) of features real [N1, D] and fake [N2, D], by torchmetrics.

    ``subset_size`` must be in [2, min(N1, N2)]. The subsets are drawn from a
    generator seeded with ``seed`` (the global torch RNG is left as it was).
    """
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    r, f = _as_tensor(real), _as_tensor(fake)
    if not 2 <= subset_size <= min(len(r), len(f)):
        raise ValueError(f"KID subset_size {subset_size} must be in [2, {min(len(r), len(f))}] "
                         f"({len(r)} real and {len(f)} generated feature rows)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=PrecomputedFeatures(r.shape[1]), subsets=subsets,
                                         subset_size=subset_size)
    metric.update(r, real=True)
    metric.update(f, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
