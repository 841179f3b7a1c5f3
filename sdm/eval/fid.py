"""FID with the standard Inception-v3 features, from a local weights file only.

The weights path comes from ``SDM_INCEPTION_WEIGHTS`` (wins) or
``evaluate.inception_weights``. With neither, FID is not computed: the
evaluation reports it under ``skipped`` with :func:`missing_weights_reason`.
A path that is set but wrong is an error (the user asked for FID).
Real-image statistics are cached per data version, split, image set and
weights file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sdm.config import Config
from sdm.eval.cache import cache_root, safe_name, short_hash
from sdm.eval.frechet import feature_statistics
from sdm.eval.inception import FID_WEIGHTS_FILENAME, FIDInceptionV3, InceptionWeightsError, load_fid_inception

ENV_WEIGHTS = "SDM_INCEPTION_WEIGHTS"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"


def inception_weights_path(config: Config) -> Path | None:
    """The configured weights file (env over params), or None when none is configured."""
    value = os.environ.get(ENV_WEIGHTS, "").strip() or config.evaluate.inception_weights.strip()
    return Path(value).expanduser() if value else None


def missing_weights_reason() -> str:
    return (
        f"no Inception weights configured: download {FID_WEIGHTS_FILENAME} ({WEIGHTS_URL}) once, then set "
        f"{ENV_WEIGHTS}=/path/to/{FID_WEIGHTS_FILENAME} or evaluate.inception_weights in params.yaml "
        "(nothing downloads at run time)"
    )


def too_few_reason(count: int, minimum: int) -> str:
    return (
        f"only {count} images (< evaluate.min_fid_samples = {minimum}): FID is strongly biased and unstable "
        "on small sets; evaluate more images (--num-samples 0 = the whole split) or lower evaluate.min_fid_samples"
    )


def load_configured_inception(config: Config, device: str | torch.device = "cpu") -> FIDInceptionV3 | None:
    """The FID network when weights are configured, else None; a configured but bad path raises."""
    path = inception_weights_path(config)
    if path is None:
        return None
    if not path.is_file():
        raise InceptionWeightsError(
            f"{path}: Inception weights file not found (set by {ENV_WEIGHTS} or evaluate.inception_weights); "
            f"expected {FID_WEIGHTS_FILENAME} from {WEIGHTS_URL}"
        )
    return load_fid_inception(path, device=device)


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 images [N, H, W, 3] -> pool3 features float64 [N, 2048]."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))


def real_statistics(
    model: FIDInceptionV3,
    images: np.ndarray,
    *,
    data_key: str,
    split: str,
    ids: list[str],
    weights_path: Path,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mu [2048], sigma [2048, 2048], from_cache) of the real images, cached per data content key.

    The cache key covers the image ids and the weights file (name and size), so
    a different subset or network never reuses stale statistics.
    """
    key = short_hash({"ids": ids, "weights": weights_path.name, "size": weights_path.stat().st_size})
    path = cache_root() / "fid_stats" / safe_name(data_key) / f"{safe_name(split)}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["mu"], f["sigma"], True
    mu, sigma = feature_statistics(inception_features(model, images))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    tmp.replace(path)
    return mu, sigma, False
