"""Per-phase learning-rate schedule: linear warmup, then constant or cosine decay."""

from __future__ import annotations

import math

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
