"""What a person watching a run sees: one compact line per log interval, plus phase and checkpoint notes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdm.train.hooks import PhaseInfo, StepLog, TrainHooks


def format_duration(seconds: float) -> str:
    """45s, 3m12s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def eta_seconds(log: StepLog) -> float:
    """Time left for all of the run's phases at the current seconds per step."""
    remaining = log.phase.total_steps - log.global_step
    return remaining * log.metrics.get("s_per_step", 0.0)


def progress_line(log: StepLog) -> str:
    """``pretrain 120/1200 | run 120/1500 | loss 0.0812 | 45.1 img/s | ETA 3m12s``."""
    m, p = log.metrics, log.phase
    parts = [f"{p.name} {log.step}/{p.steps}", f"run {log.global_step}/{p.total_steps}"]
    if "loss" in m:
        parts.append(f"loss {m['loss']:.4f}")
    if "img_per_s" in m:
        parts.append(f"{m['img_per_s']:.1f} img/s")
    parts.append(f"ETA {format_duration(eta_seconds(log))}")
    return " | ".join(parts)


class ConsoleProgress(TrainHooks):
    """Prints the progress line and run events (to stdout unless ``write`` is given)."""

    def __init__(self, write: Callable[[str], Any] | None = None, prefix: str = "[train] ") -> None:
        self._write = write or (lambda s: print(s, file=sys.stdout, flush=True))
        self.prefix = prefix

    def _say(self, text: str) -> None:
        self._write(self.prefix + text)

    def on_phase_start(self, phase: PhaseInfo) -> None:
        if phase.resumed_from:
            self._say(f"{phase.name}: resuming at step {phase.start_step}/{phase.steps} from {phase.resumed_from}")
        else:
            self._say(f"{phase.name}: {phase.steps} steps (run steps {phase.global_offset + 1}-"
                      f"{phase.global_offset + phase.steps} of {phase.total_steps})")

    def on_log(self, log: StepLog) -> None:
        self._say(progress_line(log))

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None:
        self._say(f"{phase.name} {step}/{phase.steps}: checkpoint {where}")

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None:
        self._say(f"{phase.name} {step}/{phase.steps}: EMA sample grid {path}")

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None:
        self._say(f"done: {summary.get('global_step', '?')} steps; final checkpoint {final_dir}")
