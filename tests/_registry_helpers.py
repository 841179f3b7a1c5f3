"""A tiny real checkpoint and metrics files for the registry tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdm.config import Config, resolve

# The smallest SDMUNet that is still the real architecture: 8x8 maps, 5 classes + instance edges.
TINY = [
    "model.image_size=[8,8]", "data.image_size=[8,8]", "model.num_classes=5", "model.model_channels=32",
    "model.channel_mult=[1,1]", "model.attention_resolutions=", "model.num_heads=1", "model.spade_hidden=8",
    "sample.steps=1", "sample.sampler=ddim", "sample.batch_size=4",
]


def tiny_config(*extra: str) -> Config:
    return resolve(preset="toy", overrides=[*TINY, *extra], params=None)


def make_checkpoint(directory: Path, seed: int = 0, meta: dict[str, Any] | None = None) -> Path:
    """A real checkpoint directory (random weights) written with ``sdm.model.save_checkpoint``."""
    from sdm.model import SDMUNet, save_checkpoint

    cfg = tiny_config()
    torch.manual_seed(seed)
    model = SDMUNet(cfg.model)
    with torch.no_grad():  # zero-initialised output layers would make every image ignore its label map
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    meta = {"step": 7, "data_version": "data-v1", "mlflow_run_id": "abc123", **(meta or {})}
    return save_checkpoint(directory, model.state_dict(), cfg, ema_state=model.state_dict(), meta=meta)


def write_metrics(path: Path, doc: dict[str, Any]) -> Path:
    """A metrics.json as ``sdm evaluate`` writes it (flat keys like ``fsd@1.5``, ``skipped``, ``primary_metric``)."""
    path.write_text(json.dumps(doc))
    return path
