"""A rerun of a run whose planned steps are all done: ``final/`` is rewritten in the driver, no Ray started.

``sdm train`` on a run folder whose newest checkpoint already completes every
planned phase (the README's ``--workers 1`` rerun of a finished run, a
pipeline rerun after a crash past the last step) trains 0 steps. On Ray that
still costs a cluster start and a worker group for nothing (29 s against 6 s
for the README's rerun on the shared 2-core VM): what is left is exporting
``final/`` from that checkpoint, which
the driver does itself through the same ``run_worker`` (same weights, same
events: the console's ``done`` line, train_log.jsonl's ``end``, the MLflow
run's final-checkpoint tag). Only the final meta's ``world_size`` says 1:
the exporting process, as for ``--local``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdm.config import Config
from sdm.train.checkpoint import (
    LocalCheckpointSink,
    ResumePoint,
    TrainCheckpointError,
    latest_checkpoint,
    local_resume_point,
    read_state_json,
)
from sdm.train.distributed import WorkerContext
from sdm.train.events import Hook
from sdm.train.loop import plan_phases
from sdm.train.worker import WorkerPayload, run_worker


def steps_left(config: Config, phases: Sequence[str], phase: str, step: int) -> int | None:
    """Steps still to train after a checkpoint at ``step`` of ``phase`` (as ``run_training`` resumes);
    None when that checkpoint is of a phase this run does not plan (the workers decide what that means)."""
    plan = plan_phases(config, phases)
    names = [p.name for p in plan]
    if phase not in names:
        return None
    i = names.index(phase)
    return max(0, plan[i].steps - step) + sum(p.steps for p in plan[i + 1:])


def finished_resume_point(config: Config, run_dir: Path, phases: Sequence[str]) -> ResumePoint | None:
    """The run's resume point when it leaves nothing to train, else None.

    The newest checkpoint's JSON is read first (cheap: most reruns have steps
    left and stop here); only when it says "done" is the checkpoint loaded with
    every sha256 checked, the way a worker would resume. If the newest is
    corrupted, the intact one before it decides (it usually has steps left:
    then None, and the run goes to Ray as before)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    try:
        meta = read_state_json(latest)
    except TrainCheckpointError:
        return None
    if steps_left(config, phases, str(meta["phase"]), int(meta["step"])) != 0:
        return None
    resume = local_resume_point(run_dir)
    if resume.state is None or steps_left(config, phases, resume.state.phase, resume.state.step) != 0:
        return None
    return resume


def finish_in_process(payload: WorkerPayload, hooks: Hook, resume: ResumePoint) -> Path:
    """Export ``final/`` from ``resume`` (a finished run's checkpoint) in this process, on the CPU.

    ``hooks`` get rank 0's events as under Ray. Returns ``run_dir/final``.
    This process's torch thread count is restored afterwards (``run_worker``
    sets a worker's share, which would slow what the caller does next)."""
    import torch

    ctx = WorkerContext()  # rank 0 of 1, CPU: nothing trains, the weights are only copied out
    threads = torch.get_num_threads()
    try:
        return run_worker(payload, ctx=ctx, hooks=hooks, resume=resume,
                          sink=LocalCheckpointSink(payload.run_dir, payload.config.train.keep_checkpoints, ctx))
    finally:
        torch.set_num_threads(threads)
