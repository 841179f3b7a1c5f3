"""The label-map condition, written once for training and sampling.

- ``one_hot``: integer label map -> one channel per class;
- ``instance_edges``: instance-id map -> 1 channel, 1 where a 4-neighbour has another id;
- ``make_segmap``: the SPADE input (one-hot + edges when ``model.use_instance``);
- ``null_segmap_like`` / ``drop_mask`` / ``apply_drop``: the all-zero null
  condition of classifier-free guidance and its per-sample drop in training.
"""

from __future__ import annotations

import torch

from sdm.config.schema import ModelConfig
from sdm.errors import InputError


class LabelRangeError(InputError):
    """A label value outside 0..num_classes-1."""


def _check_map(x: torch.Tensor, name: str) -> None:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [N,H,W], got shape {list(x.shape)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """label: integer [N,H,W] in 0..num_classes-1 -> float32 [N,num_classes,H,W] of 0/1.

    Raises ``LabelRangeError`` naming the offending value and the valid range.
    """
    _check_map(label, "label")
    if label.numel():
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= num_classes:
            bad = hi if hi >= num_classes else lo
            raise LabelRangeError(f"label value {bad} is out of range: expected 0..{num_classes - 1} "
                                  f"(model.num_classes={num_classes})")
    n, h, w = label.shape
    out = torch.zeros(n, num_classes, h, w, dtype=torch.float32, device=label.device)
    return out.scatter_(1, label.long().unsqueeze(1), 1.0)


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """instance: integer [N,H,W] ids -> float32 [N,1,H,W]: 1 where a 4-neighbour has another id, else 0.

    Both pixels of a differing neighbour pair are edges (boundaries are 2 px wide).
    """
    _check_map(instance, "instance")
    edge = torch.zeros(instance.shape, dtype=torch.bool, device=instance.device)
    across = instance[:, :, 1:] != instance[:, :, :-1]  # left/right neighbours differ
    edge[:, :, 1:] |= across
    edge[:, :, :-1] |= across
    down = instance[:, 1:, :] != instance[:, :-1, :]  # up/down neighbours differ
    edge[:, 1:, :] |= down
    edge[:, :-1, :] |= down
    return edge.unsqueeze(1).float()


def make_segmap(label: torch.Tensor, instance: torch.Tensor | None, config: ModelConfig) -> torch.Tensor:
    """The SPADE input: float32 [N, config.cond_channels, H, W].

    label: integer [N,H,W]; instance: integer [N,H,W] or None. With
    ``config.use_instance`` the last channel is ``instance_edges(instance)``,
    or the edges of the label map itself when no instance map is given. Without
    it the instance map is not used (the model has no edge channel).
    """
    segmap = one_hot(label, config.num_classes)
    if not config.use_instance:
        return segmap
    if instance is None:
        instance = label
    elif instance.shape != label.shape:
        raise ValueError(f"instance map shape {list(instance.shape)} differs from label map shape "
                         f"{list(label.shape)}")
    return torch.cat([segmap, instance_edges(instance.to(label.device))], dim=1)


def null_segmap_like(segmap: torch.Tensor) -> torch.Tensor:
    """The null condition of classifier-free guidance: zeros shaped like segmap [N,K,H,W]."""
    return torch.zeros_like(segmap)


def drop_mask(n: int, drop_rate: float, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [n]: True for samples whose condition is dropped (each with probability drop_rate).

    Draws n uniforms from ``generator`` (on its device, else ``device``/CPU).
    """
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate must be in [0, 1], got {drop_rate}")
    if generator is not None:
        device = generator.device
    return torch.rand(n, generator=generator, device=device) < drop_rate


def apply_drop(segmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """segmap [N,K,H,W] with the rows where mask [N] (bool) is True set to the null condition (zeros)."""
    if mask.shape != (segmap.shape[0],):
        raise ValueError(f"drop mask must be [{segmap.shape[0]}], got {list(mask.shape)}")
    keep = (~mask.to(device=segmap.device, dtype=torch.bool)).to(segmap.dtype)
    return segmap * keep.view(-1, 1, 1, 1)
