"""Training on Ray Train: the driver side (cluster, TorchTrainer, event relay) and what runs in each worker.

Driver: ``RAY_ADDRESS`` set: connect to that cluster. Unset: start a local
one sized to this machine. A ``TorchTrainer`` rerun with the same storage path
and name resumes from its last checkpoint; a dead worker makes Ray restart the
group from the latest checkpoint, up to ``train.max_failures`` times.

Workers: checkpoints keep our format (safetensors + JSON) inside the
directories Ray Train manages (``<storage_path>/<run-name>/checkpoint-<phase>-<step>``):
rank 0 writes one and reports it, the other ranks report metrics only
(``report`` is a barrier), and every rank then waits until Ray has committed
it, so a worker that dies right after a checkpoint cannot lose it. A
restarted worker group resumes from ``ray.train.get_checkpoint()``.

Rank 0 puts its events (progress, checkpoints, sample grids) on a Ray queue
as they are; a thread in the driver hands them to the driver's hooks.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdm.config import TrainConfig
from sdm.errors import InputError
from sdm.train.checkpoint import TrainState, latest_checkpoint, read_train_state, write_train_state
from sdm.train.distributed import WorkerContext
from sdm.train.events import Event, Hook
from sdm.train.worker import WorkerPayload

# Ray Train V2 routes worker prints through logging as well as stdout; one copy is enough.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class ClusterTooSmallError(InputError):
    """The Ray cluster cannot hold the requested workers."""


class TrainingFailed(RuntimeError):
    """Training failed after Ray's restarts were used up; the message has the workers' errors."""


# ---- driver side -------------------------------------------------------------------------------------------


def ensure_ray(verbose: bool = False) -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local cluster; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return True


def check_cluster(tc: TrainConfig) -> None:
    """Enough CPUs/GPUs for ``tc.workers`` workers? An error on a local cluster; a note on a remote one (it may
    autoscale)."""
    import ray

    have = ray.cluster_resources()
    need_cpu = tc.workers * tc.cpus_per_worker
    need_gpu = tc.workers if tc.use_gpu else 0
    problems = []
    if have.get("CPU", 0) < need_cpu:
        problems.append(f"{need_cpu} CPUs ({tc.workers} workers x train.cpus_per_worker="
                        f"{tc.cpus_per_worker}), the cluster has {have.get('CPU', 0):g}")
    if have.get("GPU", 0) < need_gpu:
        problems.append(f"{need_gpu} GPUs (--gpu: one per worker), the cluster has {have.get('GPU', 0):g}")
    if not problems:
        return
    text = "the run needs " + "; ".join(problems)
    if os.environ.get("RAY_ADDRESS", "").strip():
        logging.getLogger(__name__).warning("%s (waiting for the cluster to scale up)", text)
        return
    raise ClusterTooSmallError(text + ": use fewer --workers, lower train.cpus_per_worker, or set RAY_ADDRESS "
                               "to a bigger cluster")


def build_trainer(payload: WorkerPayload, queue: Any) -> Any:
    """The ``TorchTrainer`` for this run (ScalingConfig, RunConfig, FailureConfig, CheckpointConfig), all from
    the payload's resolved ``train`` section; Ray's run is ``<storage_path>/<run name>``, the run directory."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = payload.config.train
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config={"payload": payload, "queue": queue},
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=payload.run_dir.name,
            storage_path=str(payload.run_dir.parent),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )


class _Relay(threading.Thread):
    """Pulls rank 0's events off the queue and hands them to the driver's hooks."""

    def __init__(self, queue: Any, hooks: Hook) -> None:
        super().__init__(daemon=True, name="sdm-train-relay")
        self.queue, self.hooks = queue, hooks
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _drain_one(self, timeout: float) -> bool:
        from ray.util.queue import Empty

        try:
            event = self.queue.get(timeout=timeout)
        except Empty:
            return False
        self.hooks.handle(event)
        return True

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._drain_one(0.5)
            while self._drain_one(0.1):  # what arrived before the stop
                pass
        except BaseException as e:  # surfaced by run_on_ray
            self.error = e


def run_on_ray(payload: WorkerPayload, hooks: Hook, verbose: bool = False) -> Any:
    """Fit the TorchTrainer while relaying rank 0's events to ``hooks``; returns Ray's Result.

    ``verbose`` shows Ray's and the workers' own logs."""
    import ray
    from ray.train import TrainingFailedError
    from ray.util.queue import Queue

    started = ensure_ray(verbose)
    try:
        check_cluster(payload.config.train)
        queue = Queue(actor_options={"num_cpus": 0})
        relay = _Relay(queue, hooks)
        trainer = build_trainer(payload, queue)
        relay.start()
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            raise TrainingFailed(f"training failed after {payload.config.train.max_failures} restart(s) "
                                 f"(train.max_failures): {e}") from None
        finally:
            relay.stop.set()
            relay.join(timeout=30)
            queue.shutdown()
        if relay.error is not None:
            # A hook (console, run log, MLflow) failed on the driver: training itself finished.
            raise RuntimeError(f"recording the run's events failed: {relay.error!r}") from relay.error
        return result
    finally:
        if started:
            ray.shutdown()


# ---- worker side -------------------------------------------------------------------------------------------


class QueueRelay(Hook):
    """Rank 0's hook in a Ray worker: each event meant for the driver goes onto the queue as it is."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def handle(self, event: Event) -> None:
        if event.to_driver:
            self.queue.put(event)


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


def _resume_point(run_dir: Path) -> tuple[TrainState | None, str | None]:
    """Ray's latest committed checkpoint; else the newest of ours in the run dir (e.g. from ``--local``)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return read_train_state(d), Path(checkpoint.path).name
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return read_train_state(latest), latest.name
    return None, None


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train function: ``run_worker`` with Ray's rank, device, checkpoint storage and event queue."""
    import ray.train
    import ray.train.torch
    import torch

    from sdm.train.worker import run_worker

    payload: WorkerPayload = loop_config["payload"]
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if payload.config.train.use_gpu else torch.device("cpu")
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        local_rank=context.get_local_rank(), device=device)
    state, source = _resume_point(payload.run_dir)
    run_worker(payload, ctx=ctx, sink=RayCheckpointSink(ctx, payload.run_dir),
               hooks=QueueRelay(loop_config["queue"]) if ctx.is_main else None, resume=state, resume_name=source)
