"""A toy SDMUNet with every weight random (the zero-initialised output convs too), for the sampling tests."""

from __future__ import annotations

import torch

from sdm.config import resolve
from sdm.config.schema import Config
from sdm.model import SDMUNet


def perturbed(model: SDMUNet, seed: int = 0) -> SDMUNet:
    """Random weights in the zero-initialised output convs too, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def toy_config() -> Config:
    return resolve(preset="toy", params=None)


def make_toy_model(config: Config) -> SDMUNet:
    """The toy U-Net, seeded, every weight random."""
    torch.manual_seed(0)
    return perturbed(SDMUNet(config.model))
