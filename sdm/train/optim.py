"""How the weights move: AdamW at the phase's scheduled learning rate, and their exponential moving average (EMA).

The learning rate warms up linearly, then stays constant or decays on a
cosine (per phase). Sampling uses the EMA weights (the paper's 0.9999 over
long runs). A fixed rate over a short run leaves a large share of the random
initialisation in the average (0.999 ** 1200 = 0.30), so the rate warms up as
``min(rate, (1 + n) / (10 + n))`` after ``n`` updates (the schedule of
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``). With ``warmup``
off, the update is exactly the official ``update_ema``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sdm.config import PhaseConfig


def lr_at(step: int, phase: PhaseConfig) -> float:
    """The learning rate for the step that follows ``step`` completed steps of a phase.

    Warmup ramps linearly from lr / warmup_steps up to lr over ``warmup_steps``;
    then ``constant`` keeps lr and ``cosine`` decays it to 0 at ``phase.steps``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if phase.warmup_steps > 0 and step < phase.warmup_steps:
        return phase.lr * (step + 1) / phase.warmup_steps
    if phase.lr_schedule == "constant":
        return phase.lr
    if phase.lr_schedule == "cosine":
        decay_steps = max(1, phase.steps - phase.warmup_steps)
        progress = min(1.0, (step - phase.warmup_steps) / decay_steps)
        return phase.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {phase.lr_schedule!r} (expected constant or cosine)")


def make_optimizer(model: nn.Module, phase_cfg: PhaseConfig, weight_decay: float) -> torch.optim.AdamW:
    """A fresh AdamW over all of ``model``'s parameters at the phase's base lr."""
    return torch.optim.AdamW(model.parameters(), lr=phase_cfg.lr, weight_decay=weight_decay)


class EMA:
    """An fp32 shadow copy of a model's parameters (buffers are copied as-is).

    ``state_dict()`` has the model's keys, so it loads straight into the
    model (``model.load_state_dict(ema.state_dict())``).
    """

    def __init__(self, model: nn.Module, rate: float, *, warmup: bool = True, num_updates: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self.warmup = warmup
        self.num_updates = int(num_updates)
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_rate(self) -> float:
        """The decay used by the next update."""
        if not self.warmup:
            return self.rate
        n = self.num_updates
        return min(self.rate, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = rate * shadow + (1 - rate) * param, for every parameter."""
        rate = self.current_rate()
        for name, value in model.state_dict().items():
            target = self.shadow[name]
            if name in self._param_names and target.is_floating_point():
                target.mul_(rate).add_(value.detach().to(target.dtype), alpha=1.0 - rate)
            else:
                target.copy_(value.detach())
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int | None = None) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        for k, v in state.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state: {k} has shape {tuple(v.shape)}, the model {tuple(self.shadow[k].shape)}")
            self.shadow[k].copy_(v.to(self.shadow[k].dtype))
        if num_updates is not None:
            self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self
