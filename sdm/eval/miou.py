"""Confusion-matrix mIoU: per-class IoU of predicted label maps against targets.

Rows of the confusion matrix are the target (ground truth) class, columns the
predicted class. A class absent from both prediction and target over the whole
evaluated set has no IoU (NaN) and is left out of the mean, as is customary.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """int64 [C, C] counts; pred, target: integer label maps of one shape (e.g. [N, H, W]).

    Target pixels equal to ``ignore_index`` are not counted. Any other value
    outside [0, num_classes) in either map is an error (it would silently drop
    pixels otherwise).
    """
    p = _as_numpy(pred).astype(np.int64, copy=False).ravel()
    t = _as_numpy(target).astype(np.int64, copy=False).ravel()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in size: {_as_numpy(pred).shape} vs {_as_numpy(target).shape}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for name, arr in (("prediction", p), ("target", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} labels must be in [0, {num_classes}), found values in [{arr.min()}, {arr.max()}]"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """float64 [C]: TP / (TP + FP + FN) per class; NaN where the class is in neither map."""
    conf = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = np.full(conf.shape[0], np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    return iou


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of the per-class IoU over the classes present in prediction or target (NaN if none)."""
    iou = per_class_iou(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
