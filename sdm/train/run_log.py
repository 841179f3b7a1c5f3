"""``<run_dir>/train_log.jsonl``: one JSON line per run event, appended across reruns and restarts.

It is how a person (or a test) sees after the fact where each attempt
started, which checkpoint it resumed from and what the metrics were.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sdm.train.hooks import PhaseInfo, StepLog, TrainHooks

LOG_FILE = "train_log.jsonl"


def read_run_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog(TrainHooks):
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, event: str, **data: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "time": round(time.time(), 3), **data}, default=str) + "\n")

    def on_phase_start(self, phase: PhaseInfo) -> None:
        self._append("phase_start", phase=phase.name, start_step=phase.start_step, steps=phase.steps,
                     global_step=phase.global_offset + phase.start_step, resumed_from=phase.resumed_from)

    def on_log(self, log: StepLog) -> None:
        self._append("log", phase=log.phase.name, step=log.step, global_step=log.global_step, **log.metrics)

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None:
        self._append("checkpoint", phase=phase.name, step=step, global_step=phase.global_offset + step,
                     path=where)

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None:
        self._append("sample", phase=phase.name, step=step, path=str(path))

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None:
        self._append("end", final=str(final_dir), **summary)
