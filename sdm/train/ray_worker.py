"""What runs inside each Ray Train worker: the training run, with Ray's checkpoint storage and an event relay.

Checkpoints keep our format (safetensors + JSON) inside the directories Ray
Train manages (``<storage_path>/<run-name>/checkpoint-<phase>-<step>``): rank 0
writes one and reports it, the other ranks report metrics only (``report``
is a barrier), and every rank then waits until Ray has committed it, so a
worker that dies right after a checkpoint cannot lose it. A restarted worker
group resumes from ``ray.train.get_checkpoint()``.

Rank 0 relays its hook events (progress, checkpoints, sample grids) to the
driver through a Ray queue; the driver prints them and logs them to MLflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdm.config import from_dict
from sdm.train.checkpoint import TrainState, latest_checkpoint, write_train_state
from sdm.train.distributed import WorkerContext
from sdm.train.hooks import PhaseInfo, StepLog, TrainHooks


class QueueRelay(TrainHooks):
    """Rank 0's hook: each event goes to the driver as a tuple (name, *args)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def _put(self, *event: Any) -> None:
        self.queue.put(event)

    def on_phase_start(self, phase: PhaseInfo) -> None:
        self._put("on_phase_start", phase)

    def on_log(self, log: StepLog) -> None:
        self._put("on_log", log)

    def on_checkpoint(self, phase: PhaseInfo, step: int, where: str) -> None:
        self._put("on_checkpoint", phase, step, where)

    def on_sample(self, phase: PhaseInfo, step: int, path: Path) -> None:
        self._put("on_sample", phase, step, path)

    def on_end(self, final_dir: Path, summary: dict[str, Any]) -> None:
        self._put("on_end", final_dir, summary)


def dispatch_event(hooks: TrainHooks, event: tuple[Any, ...]) -> None:
    """Call the driver-side hook named by a relayed event."""
    name, *args = event
    getattr(hooks, name)(*args)


class RayCheckpointSink:
    """Checkpoints into Ray Train's storage, committed before training goes on."""

    def __init__(self, ctx: WorkerContext, run_dir: Path) -> None:
        self.ctx = ctx
        self.run_dir = run_dir

    def save(self, make_state: Callable[[], TrainState], name: str, metrics: dict[str, float]) -> str:
        import ray.train
        from ray.train import Checkpoint, CheckpointConsistencyMode

        if self.ctx.is_main:
            with tempfile.TemporaryDirectory(prefix="sdm-ckpt-") as tmp:
                path = write_train_state(Path(tmp) / name, make_state())
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)), checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint_dir_name=name)
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        return str(self.run_dir / name)


def _resume_point(run_dir: Path) -> tuple[TrainState | None, Any]:
    """Ray's latest committed checkpoint; else the newest of ours in the run dir (e.g. from ``--local``)."""
    import ray.train

    from sdm.train.checkpoint import read_train_state

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return read_train_state(d), Path(checkpoint.path).name
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return read_train_state(latest), latest.name
    return None, None


def train_worker(payload: dict[str, Any]) -> None:
    """The Ray Train function: one worker's run (see ``sdm.train.launch.build_payload`` for the payload)."""
    import ray.train
    import ray.train.torch

    from sdm.train.data_setup import sample_grid_factory, training_dataset
    from sdm.train.runner import run_training

    config = from_dict(payload["config"])
    context = ray.train.get_context()
    if payload["use_gpu"]:
        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(payload["cpus_per_worker"])))
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        local_rank=context.get_local_rank(), device=device)
    run_dir = Path(payload["run_dir"])
    state, source = _resume_point(run_dir)
    hooks: TrainHooks = QueueRelay(payload["queue"]) if ctx.is_main else TrainHooks()
    run_training(
        config, run_dir, ctx=ctx, phases=payload["phases"], sink=RayCheckpointSink(ctx, run_dir), hooks=hooks,
        dataset=training_dataset(config), resume=state, resume_name=source,
        init_from=Path(payload["init_from"]) if payload.get("init_from") else None,
        data_version=payload["data_version"],
        sampler_factory=sample_grid_factory(config, payload["splits"], payload["meta"].get("palette")),
        meta=payload["meta"],
    )
