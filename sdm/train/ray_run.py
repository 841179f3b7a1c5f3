"""Training on Ray Train: the driver side (cluster, TorchTrainer, event relay) and what runs in each worker.

Driver: ``RAY_ADDRESS`` set: connect to that cluster (probed first, ``sdm.train.ray_address``). Unset: start a
new local one sized to this machine (never the cluster ``ray start`` left a pointer to). A ``TorchTrainer``
rerun with the same storage path and name resumes from its last checkpoint; a dead worker makes Ray restart
the group from the latest checkpoint, up to ``train.max_failures`` times; a group Ray cannot place again (a
node lost, what is left too small) fails after ``PLACEMENT_RETRIES`` more tries instead of waiting forever.
Each rank reports its node (``WorkerPlaced``) as each attempt starts.

Workers: checkpoints keep our format (safetensors + JSON) inside the
directories Ray Train manages (``<storage_path>/<run-name>/checkpoint-<phase>-<step>``):
rank 0 writes one and reports it, the other ranks report metrics only
(``report`` is a barrier), and every rank then waits until Ray has committed
it, so a worker that dies right after a checkpoint cannot lose it. A
restarted worker group resumes from ``ray.train.get_checkpoint()`` when it is
intact (sha256 of every file), else from the newest intact checkpoint in the run
directory: a corrupted newest checkpoint costs the steps since the one before,
not the run (Ray would hand the same checkpoint to every restart). Ray keeps
listing the corrupted one until its ``num_to_keep`` retention deletes it, so the
checkpoint that replaces it gets a new folder name (``...-0000006-2``) rather than
being written into the folder Ray still tracks.

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
from sdm.train.checkpoint import (
    ResumePoint,
    TrainState,
    find_resume_point,
    resume_candidates,
    write_train_state,
)
from sdm.train.distributed import WorkerContext, barrier
from sdm.train.events import Event, Hook, WorkerPlaced
from sdm.train.ray_address import RayAddressError, probe_ray_address, ray_address
from sdm.train.worker import WorkerPayload

logger = logging.getLogger(__name__)

# Ray Train V2 routes worker prints through logging as well as stdout; one copy is enough.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Seconds a RAY_ADDRESS may take to accept a TCP connection before the run is refused.
PROBE_TIMEOUT_S = 5.0
# Tries Ray Train gets to place the worker group (each up to RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, Ray's
# default 60 s) before the run fails: Ray's own default is to wait forever when a node is lost and what is
# left cannot hold the workers.
PLACEMENT_RETRIES = 2


class ClusterTooSmallError(InputError):
    """The Ray cluster cannot hold the requested workers."""


class TrainingFailed(RuntimeError):
    """Training failed after Ray's restarts were used up; the message has the workers' errors."""


class ClusterLost(TrainingFailed):
    """Ray could not place the worker group again (a node was lost and what is left cannot hold it)."""


# ---- driver side -------------------------------------------------------------------------------------------


def ensure_ray(verbose: bool = False) -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local cluster; True when this call started it (or connected).

    Unset (or ``local``): always a new local cluster sized to this machine, even when ``ray start`` left a
    cluster's address in Ray's temp folder (``ray.init()`` would follow that pointer; ``address="local"`` does
    not). Set: the address is probed first (a bounded TCP connect), so one that does not answer is a
    RayAddressError in seconds rather than Ray's long retries."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    address = ray_address()
    if address and address != "local":
        probe_ray_address(address, PROBE_TIMEOUT_S)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as e:  # AuthenticationError is a RuntimeError
            raise RayAddressError(connect_error(address, e)) from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return True


def connect_error(address: str, e: BaseException) -> str:
    """The message for a cluster whose port answers but ``ray.init`` cannot join (token auth, versions)."""
    first = (str(e).splitlines() or [""])[0][:300]
    text = f"RAY_ADDRESS={address}: the port answers but Ray could not connect ({type(e).__name__}: {first})"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        # Ray 2.60 clusters started with `ray start` use token auth when a token exists, and a client given an
        # explicit address only sends one when told to.
        text += ("; if the cluster uses token authentication (`ray start` does when ~/.ray/auth_token exists), "
                 "export RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
    return text + "; the same Ray version must run on the cluster and here (`ray --version`)"


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
    if ray_address() not in ("", "local"):
        logging.getLogger(__name__).warning("%s (waiting for the cluster to scale up)", text)
        return
    raise ClusterTooSmallError(text + ": use fewer --workers, lower train.cpus_per_worker, or set RAY_ADDRESS "
                               "to a bigger cluster")


def _placement_failed(e: BaseException) -> bool:
    """Did Ray Train give up placing the worker group (its start timed out or failed, every try)?"""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError, WorkerGroupStartupTimeoutError

    return isinstance(e, ControllerError) and isinstance(
        e.controller_failure, (WorkerGroupStartupTimeoutError, WorkerGroupStartupFailedError))


def cluster_lost_message(tc: TrainConfig) -> str:
    """What was asked, what the cluster has now, and what to do: the run's checkpoints are kept."""
    import ray

    have = ray.cluster_resources()
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    timeout = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    ask = f"{tc.workers} workers x {tc.cpus_per_worker:g} CPU" + (" + 1 GPU" if tc.use_gpu else "")
    return (f"Ray could not place the run's {ask} ({tc.workers * tc.cpus_per_worker:g} CPUs"
            + (f", {tc.workers} GPUs" if tc.use_gpu else "") + f") in {PLACEMENT_RETRIES + 1} tries of "
            f"{timeout} s (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S): the cluster now has {have.get('CPU', 0):g} "
            f"CPUs" + (f" and {have.get('GPU', 0):g} GPUs" if tc.use_gpu else "") + f" on {alive} "
            f"alive node(s) (a node was lost?). The checkpoints are kept: rerun the same command once the "
            f"cluster has room again (it resumes from the last checkpoint), or with fewer --workers")


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
            failure_config=FailureConfig(max_failures=tc.max_failures, controller_failure_limit=PLACEMENT_RETRIES),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )


class _Relay(threading.Thread):
    """Pulls rank 0's events off the queue and hands them to the driver's hooks.

    It cannot die silently: an exception while taking an event off the queue or
    handing it on is logged (with its traceback, the first time) and counted,
    and the relay goes on with the next event, so one bad moment does not leave
    the console, train_log.jsonl and MLflow quiet for the rest of the run.
    Training itself never waits for the relay (the queue is unbounded), so
    keeping it alive is better than failing a run whose checkpoints are fine;
    the count is reported at the end (``errors``).
    """

    def __init__(self, queue: Any, hooks: Hook, warn: Callable[[str], Any]) -> None:
        super().__init__(daemon=True, name="sdm-train-relay")
        self.queue, self.hooks, self.warn = queue, hooks, warn
        self.stop = threading.Event()
        self.errors = 0
        self.first_error = ""
        self.died = False

    def _failed(self, what: str, e: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            import traceback

            self.first_error = f"{what}: {type(e).__name__}: {e}"
            self.warn(f"warning: the event relay: {self.first_error}; it goes on, further errors are counted\n"
                      + "".join(traceback.format_exception(e)).rstrip())
        else:
            logger.warning("sdm train relay: %s failed (%d errors so far): %r", what, self.errors, e)

    def _drain_one(self, timeout: float) -> bool:
        from ray.util.queue import Empty

        try:
            event = self.queue.get(timeout=timeout)
        except Empty:
            return False
        except Exception as e:  # the queue actor is unreachable: wait a little, try again
            self._failed("taking an event off the queue", e)
            self.stop.wait(1.0)
            return False
        try:
            self.hooks.handle(event)
        except Exception as e:
            self._failed(f"handling {type(event).__name__}", e)
        return True

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._drain_one(0.5)
            while self._drain_one(0.1):  # what arrived before the stop
                pass
        except BaseException:
            # Only a failing ``warn`` can get here; the relay is then lost, and says so wherever it still can.
            self.died = True
            logger.exception("sdm train relay: stopped by an unexpected error; the driver's console, "
                             "train_log.jsonl and MLflow get no further events")
            raise


def _log_error(text: str) -> None:
    logger.error("%s", text)


def run_on_ray(payload: WorkerPayload, hooks: Hook, verbose: bool = False,
               warn: Callable[[str], Any] = _log_error) -> Any:
    """Fit the TorchTrainer while relaying rank 0's events to ``hooks``; returns Ray's Result.

    ``verbose`` shows Ray's and the workers' own logs; ``warn`` gets the relay's problems (default: logging)."""
    import ray
    from ray.train import TrainingFailedError
    from ray.util.queue import Queue

    started = ensure_ray(verbose)
    try:
        check_cluster(payload.config.train)
        queue = Queue(actor_options={"num_cpus": 0})
        relay = _Relay(queue, hooks, warn)
        trainer = build_trainer(payload, queue)
        relay.start()
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            if _placement_failed(e):
                raise ClusterLost(cluster_lost_message(payload.config.train)) from None
            raise TrainingFailed(f"training failed after {payload.config.train.max_failures} restart(s) "
                                 f"(train.max_failures): {e}") from None
        finally:
            relay.stop.set()
            relay.join(timeout=30)
            queue.shutdown()
        if relay.is_alive():
            warn("warning: the event relay was still busy 30 s after training ended; events it holds may be "
                 "missing from the console, train_log.jsonl and MLflow")
        if relay.died:
            logger.error("sdm train relay: it stopped during the run (see the error above); events after that "
                         "are missing from the console, train_log.jsonl and MLflow; the checkpoints are complete")
        if relay.errors:
            warn(f"warning: the event relay hit {relay.errors} error(s) (first: {relay.first_error}); training "
                 f"finished and its checkpoints are complete")
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

        if (self.run_dir / name).exists():
            # A checkpoint resume skipped as corrupted: Ray still tracks that folder (and deletes it when it
            # falls out of num_to_keep), so the new one must not share it. Every rank sees the same folders
            # (shared storage) and so picks the same name.
            name = next(f"{name}-{k}" for k in range(2, 1_000_000) if not (self.run_dir / f"{name}-{k}").exists())
        barrier(self.ctx)  # every rank has its name before rank 0's checkpoint can appear under it
        if self.ctx.is_main:
            with tempfile.TemporaryDirectory(prefix="sdm-ckpt-") as tmp:
                path = write_train_state(Path(tmp) / name, make_state())
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)), checkpoint_dir_name=name)
        else:
            ray.train.report(metrics, checkpoint_dir_name=name)
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        return str(self.run_dir / name)


def _resume_point(run_dir: Path) -> ResumePoint:
    """Ray's latest committed checkpoint when intact; else the newest intact one in the run dir (also those of
    ``--local``), the corrupted ones passed over recorded. Every rank reads the same files and so agrees."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    # storage_path is a local or shared filesystem (train.storage_path), so Ray's path is readable in place.
    first = [Path(checkpoint.path)] if checkpoint is not None else []
    candidates, unreadable = resume_candidates(run_dir, first)
    return find_resume_point(candidates, unreadable)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train function: ``run_worker`` with Ray's rank, device, checkpoint storage and event queue."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from sdm.train.worker import run_worker

    payload: WorkerPayload = loop_config["payload"]
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if payload.config.train.use_gpu else torch.device("cpu")
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        local_rank=context.get_local_rank(), device=device)
    # Where this rank runs, for the run's record (train_log.jsonl, MLflow tags): one event per rank and attempt.
    runtime = ray.get_runtime_context()
    loop_config["queue"].put(WorkerPlaced(rank=ctx.rank, world_size=ctx.world_size, node_id=runtime.get_node_id(),
                                          node_ip=ray.util.get_node_ip_address()))
    run_worker(payload, ctx=ctx, sink=RayCheckpointSink(ctx, payload.run_dir),
               hooks=QueueRelay(loop_config["queue"]) if ctx.is_main else None,
               resume=_resume_point(payload.run_dir))
