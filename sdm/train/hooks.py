"""The loop's edges: hooks called on rank 0, so Ray, MLflow and the console plug in without the loop importing them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PhaseInfo:
    """A phase as the run plans it: its place in the run and its length."""

    name: str
    index: int
    steps: int
    start_step: int  # completed steps of this phase when it (re)starts
    global_offset: int  # steps of the run's earlier phases
    total_steps: int  # steps of all the run's phases
    # The checkpoint this phase resumed from (empty for a fresh start).
    resumed_from: str = ""


@dataclass(frozen=True)
class StepLog:
    """Metrics averaged over all workers and the steps since the previous log line."""

    phase: PhaseInfo
    step: int  # completed steps of the phase
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        return self.phase.global_offset + self.step


class TrainHooks:
    """No-op base: override what you need. Called on rank 0 only."""

    def on_phase_start(self, phase: PhaseInfo) -> None: ...

    def on_log(self, log: StepLog) -> None: ...

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None: ...

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None: ...

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None: ...


class HookList(TrainHooks):
    """Several hooks called in order."""

    def __init__(self, hooks: list[TrainHooks] | None = None) -> None:
        self.hooks = list(hooks or [])

    def on_phase_start(self, phase: PhaseInfo) -> None:
        for h in self.hooks:
            h.on_phase_start(phase)

    def on_log(self, log: StepLog) -> None:
        for h in self.hooks:
            h.on_log(log)

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None:
        for h in self.hooks:
            h.on_checkpoint(phase, step, where)

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None:
        for h in self.hooks:
            h.on_sample(phase, step, path)

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_end(final_dir, summary)
