"""The loop's edges: events, the hooks that receive them, and the driver's hooks (console, run log, MLflow).

The loop emits small frozen event objects; a hook is anything with
``handle(event)`` and ignores what it does not need. Rank 0's events
(phase starts, log lines, checkpoints, sample grids, the end) are what the
driver shows and records: under Ray they travel to it as they are
(``sdm.train.ray_run``). ``StepStart`` is emitted on every rank and stays on
the worker, for worker hooks (e.g. a test that kills a rank). Adding an event
is one dataclass here and one ``hooks.handle(...)`` where it happens.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sdm.best_effort import BestEffortSender
from sdm.config import PhaseConfig

LOG_FILE = "train_log.jsonl"
MLFLOW_METRICS = ("loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "lr", "grad_norm", "img_per_s")


@dataclass(frozen=True)
class PhaseInfo:
    """A phase as the run plans it: its settings, its place in the run and where it (re)starts."""

    name: str
    index: int  # position in PHASE_ORDER (orders checkpoints across phases)
    cfg: PhaseConfig
    global_offset: int  # steps of the run's earlier phases
    total_steps: int  # steps of all the run's phases
    start_step: int = 0  # completed steps of this phase when it (re)starts
    # The checkpoint this phase resumed from (empty for a fresh start).
    resumed_from: str = ""

    @property
    def steps(self) -> int:
        return self.cfg.steps


class Event:
    """Base of the events; ``to_driver`` says whether rank 0 sends it on to the driver's hooks."""

    to_driver: ClassVar[bool] = True


@dataclass(frozen=True)
class Launching(Event):
    """On the driver, before any worker starts: a worker hook that cannot work with this run raises ConfigError."""

    workers: int
    run_dir: Path


@dataclass(frozen=True)
class WorkerPlaced(Event):
    """Every Ray rank, as each attempt starts: the node it runs on (put straight on the driver's queue)."""

    rank: int
    world_size: int
    node_id: str
    node_ip: str


@dataclass(frozen=True)
class CheckpointSkipped(Event):
    """Rank 0, before training: resume passed over this checkpoint (corrupted, incomplete, unreadable)."""

    path: str
    reason: str


@dataclass(frozen=True)
class PhaseStart(Event):
    phase: PhaseInfo


@dataclass(frozen=True)
class StepStart(Event):
    """Every rank, before each step; ``step`` = completed steps of the phase."""

    to_driver: ClassVar[bool] = False

    phase: PhaseInfo
    step: int
    rank: int

    @property
    def global_step(self) -> int:
        return self.phase.global_offset + self.step


@dataclass(frozen=True)
class StepLog(Event):
    """Metrics averaged over all workers and the steps since the previous log line."""

    phase: PhaseInfo
    step: int  # completed steps of the phase
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        return self.phase.global_offset + self.step


@dataclass(frozen=True)
class CheckpointSaved(Event):
    phase: PhaseInfo
    step: int
    where: str


@dataclass(frozen=True)
class SampleSaved(Event):
    """An EMA sample grid PNG written by rank 0."""

    phase: PhaseInfo
    step: int
    path: Path


@dataclass(frozen=True)
class RunEnd(Event):
    final_dir: Path
    summary: dict[str, Any]


class Hook:
    """Receives events; the base ignores them all. Rank 0's events reach rank 0's hooks only."""

    def handle(self, event: Event) -> None:
        """React to ``event`` (ignore the kinds you do not need)."""


class Hooks(Hook):
    """Several hooks, each handed every event in order."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)

    def handle(self, event: Event) -> None:
        for h in self.hooks:
            h.handle(event)


class GuardedHooks(Hook):
    """The driver's hooks, each isolated: one that raises does not keep the event from the others.

    A hook that fails (a full disk under train_log.jsonl, a closed stdout) is
    reported through ``warn`` at its first failure, with the traceback, and
    counted; :attr:`failures` gives the counts for the end-of-run summary.
    Training goes on: what a hook records is the run's visibility, the
    checkpoints and final weights do not depend on it.
    """

    def __init__(self, hooks: Sequence[Hook], warn: Callable[[str], Any]) -> None:
        self.hooks = list(hooks)
        self._warn = warn
        self.failures: dict[str, int] = {}

    def handle(self, event: Event) -> None:
        for h in self.hooks:
            try:
                h.handle(event)
            except Exception as e:
                name = type(h).__name__
                self.failures[name] = self.failures.get(name, 0) + 1
                if self.failures[name] == 1:
                    import traceback

                    self._warn(f"warning: {name} failed on {type(event).__name__} ({type(e).__name__}: {e}); "
                               f"training goes on, further failures of {name} are counted\n"
                               + "".join(traceback.format_exception(e)).rstrip())


# ---- what a person watching the run sees -------------------------------------------------------------------


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


class ConsoleProgress(Hook):
    """Prints the progress line and run events (to stdout unless ``write`` is given)."""

    def __init__(self, write: Callable[[str], Any] | None = None, prefix: str = "[train] ") -> None:
        self._write = write or (lambda s: print(s, file=sys.stdout, flush=True))
        self.prefix = prefix

    def _say(self, text: str) -> None:
        self._write(self.prefix + text)

    def handle(self, event: Event) -> None:
        match event:
            case CheckpointSkipped(path=path, reason=reason):
                self._say(f"warning: skipped checkpoint {path}: {reason}")
            case PhaseStart(phase=p) if p.resumed_from:
                self._say(f"{p.name}: resuming at step {p.start_step}/{p.steps} from {p.resumed_from}")
            case PhaseStart(phase=p):
                self._say(f"{p.name}: {p.steps} steps (run steps {p.global_offset + 1}-"
                          f"{p.global_offset + p.steps} of {p.total_steps})")
            case StepLog():
                self._say(progress_line(event))
            case CheckpointSaved(phase=p, step=step, where=where):
                self._say(f"{p.name} {step}/{p.steps}: checkpoint {where}")
            case SampleSaved(phase=p, step=step, path=path):
                self._say(f"{p.name} {step}/{p.steps}: EMA sample grid {path}")
            case RunEnd(final_dir=final, summary=summary):
                self._say(f"done: {summary.get('global_step', '?')} steps; final checkpoint {final}")


# ---- what stays after the run ------------------------------------------------------------------------------


def read_run_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of ``<run_dir>/train_log.jsonl``, oldest first."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog(Hook):
    """``<run_dir>/train_log.jsonl``: one JSON line per run event, appended across reruns and restarts.

    It is how a person (or a test) sees after the fact where each attempt
    started, which checkpoint it resumed from and what the metrics were.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, event: str, **data: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "time": round(time.time(), 3), **data}, default=str) + "\n")

    def note(self, event: str, **data: Any) -> None:
        """Append a line that is not a loop event (e.g. the driver's ``tracking`` summary)."""
        self._append(event, **data)

    def handle(self, event: Event) -> None:
        match event:
            case WorkerPlaced(rank=rank, world_size=n, node_id=node_id, node_ip=ip):
                self._append("worker", rank=rank, world_size=n, node_id=node_id, node_ip=ip)
            case CheckpointSkipped(path=path, reason=reason):
                self._append("checkpoint_skipped", path=path, reason=reason)
            case PhaseStart(phase=p):
                self._append("phase_start", phase=p.name, start_step=p.start_step, steps=p.steps,
                             global_step=p.global_offset + p.start_step, resumed_from=p.resumed_from)
            case StepLog(phase=p, step=step, metrics=metrics):
                self._append("log", phase=p.name, step=step, global_step=event.global_step, **metrics)
            case CheckpointSaved(phase=p, step=step, where=where):
                self._append("checkpoint", phase=p.name, step=step, global_step=p.global_offset + step, path=where)
            case SampleSaved(phase=p, step=step, path=path):
                self._append("sample", phase=p.name, step=step, path=str(path))
            case RunEnd(final_dir=final, summary=summary):
                self._append("end", final=str(final), **summary)


class MlflowLogger(Hook):
    """Logs metrics (global step), sample grids and checkpoint/final locations to one MLflow run.

    Runs in the driver (rank 0's events are relayed from the Ray workers), so
    workers need no access to the tracking store; ``sdm.train.launch`` starts
    and ends the run. Tracking is best-effort: the calls go through ``sender``
    (``sdm.best_effort``), which retries, drops and counts them in the
    background, so an unreachable store never stops or slows training.
    """

    def __init__(self, client: Any, run_id: str, sender: BestEffortSender) -> None:
        self.client = client
        self.run_id = run_id
        self.sender = sender

    def handle(self, event: Event) -> None:
        client, run_id, send = self.client, self.run_id, self.sender.submit
        match event:
            case WorkerPlaced(rank=rank, node_id=node_id, node_ip=ip):
                # A tag, not a param: a restarted worker group may land on other nodes.
                send("tag", lambda: client.set_tag(run_id, f"sdm.worker.{rank}.node", f"{node_id} ({ip})"))
            case PhaseStart(phase=p):
                send("tag", lambda: client.set_tag(run_id, "sdm.phase", p.name))
            case StepLog():
                from mlflow.entities import Metric

                # The event's time, not the try's: a retried batch writes the same points again.
                now = int(time.time() * 1000)
                step = event.global_step
                metrics = [Metric(k, float(event.metrics[k]), now, step) for k in MLFLOW_METRICS if k in event.metrics]
                metrics.append(Metric("phase", float(event.phase.index), now, step))
                send("metrics", lambda: client.log_batch(run_id, metrics=metrics))
            case CheckpointSaved(where=where):
                send("tag", lambda: client.set_tag(run_id, "sdm.last_checkpoint", where))
            case SampleSaved(path=path):
                send("artifact", lambda: client.log_artifact(run_id, str(path), artifact_path="samples"))
            case RunEnd(final_dir=final):
                send("tag", lambda: client.set_tag(run_id, "sdm.final_checkpoint", str(final)))
