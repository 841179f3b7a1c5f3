"""Train the compact evaluation segmenter on the real training split of a prepared dataset."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdm.config import DataConfig, SegmenterConfig
from sdm.eval.miou import confusion_matrix, mean_iou, per_class_iou
from sdm.eval.segmenter import ARCH, EvalSegNet, Segmenter, SegmenterError, uint8_from_model_range


def load_split_arrays(prepared_dir: str | Path, split: str, limit: int = 0) -> dict[str, object]:
    """The real images of a split as arrays: images uint8 [N, H, W, 3], labels int64 [N, H, W],
    instances int64 [N, H, W] or None, ids list[str]; ``limit`` > 0 keeps the first ``limit`` items."""
    from sdm.data.loader import PreparedDataset

    ds = PreparedDataset(prepared_dir, split=split, augment=False)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    images, labels, instances, ids = [], [], [], []
    for i in range(n):
        item = ds[i]
        images.append(uint8_from_model_range(item["image"][None])[0])
        labels.append(item["label"].numpy().astype(np.int64))
        if "instance" in item:
            instances.append(item["instance"].numpy().astype(np.int64))
        ids.append(str(item["id"]))
    if n == 0:
        return {"images": np.zeros((0, 0, 0, 3), np.uint8), "labels": np.zeros((0, 0, 0), np.int64),
                "instances": None, "ids": []}
    return {
        "images": np.stack(images),
        "labels": np.stack(labels),
        "instances": np.stack(instances) if len(instances) == n else None,
        "ids": ids,
    }


def segmenter_miou(segmenter: Segmenter, images: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU [C]) of the segmenter on uint8 images [N, H, W, 3] against labels [N, H, W]."""
    pred, _ = segmenter.predict(images)
    conf = confusion_matrix(pred, labels, segmenter.num_classes)
    return mean_iou(conf), per_class_iou(conf)


def train_segmenter(
    prepared_dir: str | Path,
    num_classes: int,
    config: SegmenterConfig,
    *,
    data_config: DataConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[EvalSegNet, dict]:
    """Train :class:`EvalSegNet` for ``config.steps`` steps (Adam, cosine-decayed lr, cross-entropy).

    Uses the augmented training split (flips / crops as in ``data_config``,
    the training defaults when None). Returns the network (eval mode) and a
    summary dict (steps, first and final loss, training images). The network
    is returned on the CPU.
    """
    from sdm.data.loader import PreparedDataset

    torch.manual_seed(seed)
    data_config = data_config or DataConfig()
    ds = PreparedDataset(prepared_dir, split="train", augment=True, seed=seed, random_crop=data_config.random_crop,
                         random_flip=data_config.random_flip, crop_scale=tuple(data_config.crop_scale))
    if len(ds) == 0:
        raise SegmenterError(f"{prepared_dir}: the train split is empty; the evaluation segmenter needs real "
                             "training images")
    net = EvalSegNet(num_classes, width=config.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    # Cosine decay to 0 over the run: a short schedule still ends converged.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))
    )
    batch = min(config.batch_size, len(ds))
    net.train()
    step, epoch, losses = 0, 0, []
    while step < config.steps:
        ds.set_epoch(epoch)
        # The dataset shuffles and augments per (seed, epoch) itself.
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, drop_last=len(ds) >= batch)
        for item in loader:
            logits = net(item["image"].to(device))
            loss = F.cross_entropy(logits, item["label"].to(device).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0 or step == config.steps:
                log(f"segmenter step {step}/{config.steps}: loss {np.mean(losses[-100:]):.4f}")
            if step >= config.steps:
                break
        epoch += 1
    net.eval().cpu()
    k = max(1, min(10, len(losses) // 4))
    return net, {"arch": ARCH, "steps": step, "initial_loss": float(np.mean(losses[:k])),
                 "final_loss": float(np.mean(losses[-k:])), "train_images": len(ds)}
