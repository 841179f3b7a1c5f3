"""A tiny teacher checkpoint and its student for the distillation tests (tests/test_distill_*.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from sdm.config import resolve
from sdm.config.schema import Config
from sdm.model import SDMUNet, save_checkpoint

SIZE = 16
CLASSES = 5


def tiny_teacher_config(*overrides: str, size: int = SIZE) -> Config:
    """size x size (16), two levels, 5 classes: a U-Net whose forward + backward take milliseconds."""
    return resolve(preset="toy", params=None, overrides=[
        f"model.image_size=[{size},{size}]", f"data.image_size=[{size},{size}]", "model.channel_mult=[1,2]",
        f"model.attention_resolutions=[{size // 2}]", f"model.num_classes={CLASSES}", "model.spade_hidden=16",
        *overrides,
    ])


def randomised(model: SDMUNet, seed: int = 0, scale: float = 0.05) -> SDMUNet:
    """Every weight random (the zero-initialised output conv too), so the label map matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_teacher(config: Config, seed: int = 0) -> SDMUNet:
    torch.manual_seed(seed)
    return randomised(SDMUNet(config.model), seed)


def save_teacher(directory: Path, config: Config, seed: int = 0) -> Path:
    """A teacher checkpoint whose EMA differs from its model weights (the EMA must be the one used)."""
    model = tiny_teacher(config, seed)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    raw = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in ema.items()}
    return save_checkpoint(directory, raw, config, ema_state=ema, meta={"step": 1})


def embedded_model(config: Config, seed: int = 0) -> SDMUNet:
    """A guidance-embedded U-Net with every weight random (the guidance embedding's last layer too)."""
    torch.manual_seed(seed)
    return randomised(SDMUNet(replace(config.model, guidance_embed=True)), seed)


def segmaps(config: Config, n: int, seed: int) -> torch.Tensor:
    """n blocky one-hot label maps (+ edges) [n, C, H, W]."""
    from sdm.conditioning import make_segmap

    g = torch.Generator().manual_seed(seed)
    h, w = config.model.image_size
    coarse = torch.randint(0, config.model.num_classes, (n, h // 4, w // 4), generator=g)
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
    return make_segmap(labels, None, config.model)
