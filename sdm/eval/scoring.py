"""Score one set of generated images: mIoU, FSD, feature diversity, FID and KID.

Conventions (also in the README):
- mIoU: the segmenter's predictions on all R x N samples against the input
  label maps, from one confusion matrix over the whole set;
- FSD and FID: repeat 0 (one sample per label map) against the N real
  images of the same label maps, so both sets have the same size whatever R is;
  FID from ``evaluate.min_fid_samples`` images. KID (with ``kid_std``, its
  spread over subsets): all R x N samples against the N real images (KID is
  unbiased for unequal sets; more samples, less spread), from
  ``evaluate.min_kid_samples`` real images. Below a minimum: a named skip with
  the count;
- feature_diversity: over the R samples of each label map (needs R >= 2): the
  mean pairwise Euclidean distance between the unit-normalised segmenter
  features of the R samples of a label map, averaged over label maps
  (0 = identical samples; at most 2). It is reported under its own name: it is
  not LPIPS, which is reported as skipped with :func:`lpips_skip_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdm.config import Config
from sdm.eval.distances import fid_from_features, kid_from_features, kid_subset_size
from sdm.eval.fid import inception_features
from sdm.eval.frechet import feature_statistics, frechet_distance
from sdm.eval.inception import FIDInceptionV3
from sdm.eval.miou import confusion_matrix, mean_iou, per_class_iou
from sdm.eval.segmenter import Segmenter


@dataclass
class RealReference:
    """The real side of the comparison, computed once per evaluation.

    images uint8 [N, H, W, 3]; labels int64 [N, H, W]; seg_features float64
    [N, D]; inception_features float64 [N, 2048] or None; inception_skips
    {"fid" | "kid": reason} for the Inception metrics that are not computed.
    """

    images: np.ndarray
    labels: np.ndarray
    seg_features: np.ndarray
    inception_features: np.ndarray | None
    inception_skips: dict[str, str]


@dataclass
class KidSettings:
    """KID's subsets: ``subsets`` draws of min(``subset_size``, half the set) images, seeded."""

    subsets: int = 100
    subset_size: int = 1000
    seed: int = 0


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
    """Why LPIPS diversity is not reported (and what is instead)."""
    where = f" (evaluate.lpips_weights = {config.evaluate.lpips_weights})" if config.evaluate.lpips_weights else ""
    return (
        "LPIPS needs an ImageNet VGG/AlexNet/SqueezeNet backbone: the packages that implement it (lpips, "
        "torchmetrics, piq, pyiqa) ship only its small linear heads and take the backbone from torchvision "
        f"(downloaded at run time), which cannot be installed beside this torch{where}; feature_diversity "
        "(mean pairwise segmenter-feature distance) is reported instead"
    )


def inception_scores(real: np.ndarray, fake: np.ndarray, skips: dict[str, str], kid: KidSettings,
                     fid_rows: int | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """FID / KID (+ kid_std) of Inception features real [N1, 2048] vs fake [N2, 2048], but those in ``skips``.

    FID uses the first ``fid_rows`` fake rows (all when None), KID all of them.
    """
    metrics: dict[str, float] = {}
    if "fid" not in skips:
        metrics["fid"] = fid_from_features(real, fake[:fid_rows])
    skips = dict(skips)
    if "kid" not in skips:
        m = kid_subset_size(len(real), len(fake), kid.subset_size)
        if m < 2:
            skips["kid"] = (f"KID needs subsets of at least 2 images, at most half of each set: got {len(real)} "
                            f"and {len(fake)} images")
        else:
            metrics["kid"], metrics["kid_std"] = kid_from_features(real, fake, subsets=kid.subsets, subset_size=m,
                                                                   seed=kid.seed)
    return metrics, skips


def _fsd(real: np.ndarray, fake: np.ndarray) -> tuple[float | None, str | None]:
    if len(real) < 2 or len(fake) < 2:
        return None, f"FSD needs at least 2 images on each side, got {len(real)} real and {len(fake)} generated"
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake)), None


def score_samples(
    samples: np.ndarray,
    ref: RealReference,
    segmenter: Segmenter,
    inception: FIDInceptionV3 | None,
    *,
    kid: KidSettings | None = None,
    batch_size: int = 32,
) -> tuple[dict[str, float], dict[str, str], np.ndarray]:
    """samples uint8 [R, N, H, W, 3] for the N label maps of ``ref``.

    Returns (metrics {miou, fsd, feature_diversity, fid, kid, kid_std},
    skipped {name: reason}, per-class IoU float [C] with NaN for classes in
    neither map).
    """
    r, n = samples.shape[:2]
    if n != len(ref.labels):
        raise ValueError(f"got samples for {n} label maps, expected {len(ref.labels)}")
    flat = samples.reshape(r * n, *samples.shape[2:])
    pred, feats = segmenter.predict(flat, batch_size=batch_size)
    conf = confusion_matrix(pred, np.concatenate([ref.labels] * r), segmenter.num_classes)
    metrics: dict[str, float] = {"miou": mean_iou(conf)}
    skipped: dict[str, str] = {}
    feats = feats.reshape(r, n, -1)

    fsd, why = _fsd(ref.seg_features, feats[0])
    if fsd is None:
        skipped["fsd"] = why or ""
    else:
        metrics["fsd"] = fsd

    if r >= 2:
        metrics["feature_diversity"] = feature_diversity(feats.transpose(1, 0, 2))
    else:
        skipped["feature_diversity"] = "repeats = 1: diversity needs R >= 2 samples per label map (--repeats)"

    skips = {k: ref.inception_skips.get(k, "") for k in ("fid", "kid") if k in ref.inception_skips}
    if ref.inception_features is None or inception is None:
        skipped.update({k: skips.get(k) or "no Inception network" for k in ("fid", "kid")})
    elif len(skips) < 2:
        fake = inception_features(inception, flat, batch_size=batch_size)  # [R*N]: repeat 0 first
        m, sk = inception_scores(ref.inception_features, fake, skips, kid or KidSettings(), fid_rows=n)
        metrics.update(m)
        skipped.update(sk)
    else:
        skipped.update(skips)
    if "kid" in skipped:  # kid_std is KID's spread: skipped with it, for the same reason
        skipped.setdefault("kid_std", skipped["kid"])
    return metrics, skipped, per_class_iou(conf)
