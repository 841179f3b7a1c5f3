"""The EMA sample grid drawn during training: label map | guided EMA sample | real image, one row each.

The label maps are fixed for the whole run (the first items of the val split,
or of train when there is no val split) and so is the sampling seed, so grids
from successive steps show the model improving on the same inputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdm.config import Config
from sdm.sampling import generate
from sdm.viz import colorize, save_grid


class EmaSampleGrid:
    """Renders guided samples of the EMA weights for fixed label maps."""

    def __init__(self, config: Config, model: nn.Module, items: list[dict[str, Any]],
                 palette: list[list[int]] | None = None) -> None:
        if not items:
            raise ValueError("the sample grid needs at least one label map")
        self.config = config
        # A private copy on CPU-or-model-device: loading EMA weights must not touch the training model.
        self.model = copy.deepcopy(model).eval()
        self.labels = torch.stack([it["label"] for it in items]).long()
        self.instances = (torch.stack([it["instance"] for it in items]).long()
                          if all(it.get("instance") is not None for it in items) else None)
        self.real = [((it["image"].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for it in items]
        self.palette = palette

    @torch.no_grad()
    def render(self, ema_state: dict[str, torch.Tensor], path: Path, guidance_scale: float) -> Path:
        """Sample with ``config.sample`` (sampler, steps, seed) at ``guidance_scale``; save the grid PNG."""
        self.model.load_state_dict(ema_state)
        sc = self.config.sample
        samples = generate(self.model, self.config, self.labels, self.instances, guidance_scale=guidance_scale,
                           sampler=sc.sampler, steps=sc.steps, seed=sc.seed, batch_size=sc.batch_size, eta=sc.eta)
        rows = [[colorize(label.numpy(), self.palette), np.asarray(sample), real]
                for label, sample, real in zip(self.labels, samples, self.real, strict=True)]
        return save_grid(rows, path)
