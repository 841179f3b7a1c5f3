"""A toy SDMUNet with every weight random (the zero-initialised output convs too), for the sampling tests."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.fixture(scope="module")
def toy() -> Config:
    """The toy preset's config, once per test module."""
    return toy_config()


@pytest.fixture(scope="module")
def toy_model(toy: Config) -> SDMUNet:
    """The toy U-Net with every weight random, once per test module."""
    return make_toy_model(toy)


def blocky_labels(config: Config, n: int, block: int, seed: int) -> np.ndarray:
    """n random label maps int64 [n, H, W] in [0, num_classes), constant over block x block squares."""
    h, w = config.model.image_size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, config.model.num_classes, (n, h // block, w // block), generator=g)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2).numpy()
