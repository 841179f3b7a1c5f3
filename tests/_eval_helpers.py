"""Tiny prepared data and checkpoints for the evaluation tests (built with the real data and model APIs)."""

from __future__ import annotations

from pathlib import Path

import torch

from sdm.config import Config, resolve
from sdm.data.prepare import prepare
from sdm.data.synthetic import synthesize

# The smallest model the U-Net accepts (GroupNorm needs multiples of 32 channels).
TINY_MODEL = ["model.channel_mult=[1,2]", "model.attention_resolutions=[]", "model.spade_hidden=16"]
# Fast evaluation settings: a 20-step segmenter, 2-3 sampling steps.
FAST_EVAL = [
    "evaluate.segmenter.steps=20", "evaluate.segmenter.width=8", "evaluate.segmenter.batch_size=8",
    "evaluate.steps=2", "evaluate.batch_size=8", "evaluate.repeats=2",
]


def make_prepared(root: Path, n: int = 16, val_fraction: float = 0.25) -> Path:
    synthesize(root / "raw", n=n, size=32, seed=0, workers=1)
    prepare("folder", root / "raw", root / "prepared", [32, 32], val_fraction=val_fraction, split_seed=0, workers=1)
    return root / "prepared"


def tiny_config(*extra: str) -> Config:
    return resolve(overrides=[*TINY_MODEL, *FAST_EVAL, *extra], params=None)


def make_checkpoint(directory: Path, config: Config, meta: dict | None = None, seed: int = 0) -> Path:
    """A randomly initialised checkpoint whose zero-initialised output layers are perturbed,
    so that the label map and the guidance scale change the samples (as in a trained model)."""
    from sdm.model import SDMUNet, save_checkpoint

    torch.manual_seed(seed)
    model = SDMUNet(config.model)
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    return save_checkpoint(directory, state, config, ema_state=state, meta=meta or {})
