"""Checkpoint sinks for runs without Ray: rank 0 writes into the run directory, everyone waits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdm.train.checkpoint import CheckpointStore, TrainState
from sdm.train.distributed import WorkerContext, barrier


class LocalCheckpointSink:
    """``<run_dir>/checkpoint-<phase>-<step>/``, the newest ``keep`` kept."""

    def __init__(self, run_dir: str | Path, keep: int, ctx: WorkerContext) -> None:
        self.store = CheckpointStore(run_dir, keep)
        self.ctx = ctx

    def save(self, make_state: Callable[[], TrainState], name: str, metrics: dict[str, float]) -> str:
        path = self.store.save(make_state()) if self.ctx.is_main else self.store.root / name
        barrier(self.ctx)  # nobody runs ahead of a checkpoint that might be needed to resume
        return str(path)

    def latest(self) -> Path | None:
        return self.store.latest()
