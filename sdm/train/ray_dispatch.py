"""The driver side of a Ray training run: connect to (or start) a cluster, build the TorchTrainer, relay events.

``RAY_ADDRESS`` set: connect to that cluster. Unset: start a local one sized
to this machine. A ``TorchTrainer`` rerun with the same storage path and name
resumes from its last checkpoint; a dead worker makes Ray restart the group
from the latest checkpoint, up to ``train.max_failures`` times.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.errors import InputError
from sdm.train.hooks import TrainHooks

# Ray Train V2 routes worker prints through logging as well as stdout; one copy is enough.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class ClusterTooSmallError(InputError):
    """The Ray cluster cannot hold the requested workers."""


class TrainingFailed(RuntimeError):
    """Training failed after Ray's restarts were used up; the message has the workers' errors."""


@dataclass(frozen=True)
class RaySettings:
    workers: int
    use_gpu: bool
    cpus_per_worker: int
    storage_path: Path  # absolute
    run_name: str
    max_failures: int
    keep_checkpoints: int
    verbose: bool = False


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


def check_cluster(settings: RaySettings) -> None:
    """Enough CPUs/GPUs for the workers? An error on a local cluster; a note on a remote one (it may autoscale)."""
    import ray

    have = ray.cluster_resources()
    need_cpu = settings.workers * settings.cpus_per_worker
    need_gpu = settings.workers if settings.use_gpu else 0
    problems = []
    if have.get("CPU", 0) < need_cpu:
        problems.append(f"{need_cpu} CPUs ({settings.workers} workers x train.cpus_per_worker="
                        f"{settings.cpus_per_worker}), the cluster has {have.get('CPU', 0):g}")
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


def build_trainer(payload: dict[str, Any], settings: RaySettings) -> Any:
    """The ``TorchTrainer`` for this run (ScalingConfig, RunConfig, FailureConfig, CheckpointConfig)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sdm.train.ray_worker import train_worker

    resources: dict[str, float] = {"CPU": settings.cpus_per_worker}
    if settings.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=settings.run_name,
            storage_path=str(settings.storage_path),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )


class _Relay(threading.Thread):
    """Pulls rank 0's events off the queue and calls the driver's hooks."""

    def __init__(self, queue: Any, hooks: TrainHooks) -> None:
        super().__init__(daemon=True, name="sdm-train-relay")
        self.queue, self.hooks = queue, hooks
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _drain_one(self, timeout: float) -> bool:
        from ray.util.queue import Empty

        from sdm.train.ray_worker import dispatch_event

        try:
            event = self.queue.get(timeout=timeout)
        except Empty:
            return False
        dispatch_event(self.hooks, event)
        return True

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._drain_one(0.5)
            while self._drain_one(0.1):  # what arrived before the stop
                pass
        except BaseException as e:  # surfaced by run_on_ray
            self.error = e


def run_on_ray(payload: dict[str, Any], settings: RaySettings, hooks: TrainHooks) -> Any:
    """Fit the TorchTrainer while relaying events to ``hooks``; returns Ray's Result."""
    import ray
    from ray.train import TrainingFailedError
    from ray.util.queue import Queue

    started = ensure_ray(settings.verbose)
    try:
        check_cluster(settings)
        queue = Queue(actor_options={"num_cpus": 0})
        relay = _Relay(queue, hooks)
        trainer = build_trainer({**payload, "queue": queue}, settings)
        relay.start()
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            raise TrainingFailed(f"training failed after {settings.max_failures} restart(s) "
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
