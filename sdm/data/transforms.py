"""Joint image + label (+ instance) transforms with albumentations.

Images are resampled smoothly (area when shrinking, bicubic when enlarging);
labels and instance maps always with nearest neighbour, so class ids survive.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def resize_pair(
    image: np.ndarray, label: np.ndarray, instance: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize to ``size`` = (H, W). image uint8 [h,w,3]; label/instance int [h',w'] (may differ from h,w).

    Labels may come at another resolution than the image (CelebAMask-HQ: 512 vs
    1024), so each is resized on its own; nothing is resized when already at size.
    """
    h, w = size
    resize = A.Resize(h, w, interpolation=cv2.INTER_CUBIC, area_for_downscale="image",
                      mask_interpolation=cv2.INTER_NEAREST)
    # cv2 cannot resize int64; ids fit in int32 (labels < 65536, instance ids checked by the reader).
    masks = [label.astype(np.int32)] + ([] if instance is None else [instance.astype(np.int32)])
    if image.shape[:2] == label.shape:
        if label.shape == (h, w):
            return image, label, instance
        out = resize(image=image, masks=masks)
        image, masks = out["image"], out["masks"]
    else:
        if image.shape[:2] != (h, w):
            image = resize(image=image)["image"]
        if label.shape != (h, w):
            masks = resize(image=np.zeros((*label.shape, 1), np.uint8), masks=masks)["masks"]
    label = np.asarray(masks[0]).astype(np.int64)
    instance = None if instance is None else np.asarray(masks[1]).astype(np.int64)
    return image, label, instance


def train_augment(
    size: tuple[int, int], *, random_crop: bool, random_flip: bool, crop_scale: tuple[float, float]
) -> A.Compose:
    """The official training recipe: a random crop of (crop_scale) the side length, resized back, and a flip.

    Seed it per example with ``set_random_seed`` for deterministic augmentation.
    Call as ``t(image=uint8 [H,W,3], masks=[label, instance])``.
    """
    h, w = size
    ops: list[A.BasicTransform] = []
    if random_crop:
        lo, hi = crop_scale
        ops.append(A.RandomResizedCrop(
            size=(h, w), scale=(lo * lo, hi * hi), ratio=(w / h, w / h),
            interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST,
        ))
    if random_flip:
        ops.append(A.HorizontalFlip(p=0.5))
    return A.Compose(ops)
