"""``sdm train`` as a function: checks, MLflow run, then the workers (on Ray, or in this process).

The driver owns the run's visibility: the progress line, ``train_log.jsonl``
and MLflow logging are hooks fed by rank 0's events (relayed from the Ray
workers). Everything that can be wrong with the input is checked here, before
any worker starts (``sdm.train.preflight``). One MLflow run per training run
directory: its id is kept in ``<run_dir>/mlflow_run.json`` and a rerun that
resumes logs into the same run.

Tracking is best-effort for training: an MLflow store that cannot be reached
at the start is a warning and the run trains without it; one that goes away
mid-run costs only the MLflow calls that do not get through after a few tries
(``sdm.best_effort``), counted at the end on the console, in train_log.jsonl
(a ``tracking`` line) and in ``TrainResult.tracking``. The console and
train_log.jsonl are the complete record either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.best_effort import BestEffortPolicy
from sdm.config import Config, ConfigError, to_dict, write_resolved
from sdm.registry.lineage import git_commit
from sdm.tracking import bounded_http
from sdm.train.events import ConsoleProgress, GuardedHooks, Hook, Hooks, Launching, MlflowLogger, RunLog
from sdm.train.finished import finish_in_process, finished_resume_point
from sdm.train.loop import resolve_phases
from sdm.train.preflight import Preflight, preflight
from sdm.train.worker import FINAL_DIR, WorkerPayload

RUN_FILE = "mlflow_run.json"


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    global_step: int
    mlflow_run_id: str | None
    # What became of the MLflow calls (sdm.best_effort.SendReport.summary()); None without MLflow.
    tracking: dict[str, Any] | None = None


def absolute_paths(config: Config) -> Config:
    """The config with data.prepared and train.storage_path absolute (workers may run elsewhere)."""
    data = dataclasses.replace(config.data, prepared=str(Path(config.data.prepared).resolve()))
    train = dataclasses.replace(config.train, storage_path=str(Path(config.train.storage_path).resolve()))
    return dataclasses.replace(config, data=data, train=train)


def check_run_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"--run-name {name!r}: expected a plain folder name (no slashes)")
    return name


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"pretrain": {"lr": 1e-4}}} -> {"train.pretrain.lr": "0.0001"}."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_run(config: Config, run_dir: Path, run_name: str, experiment: str,
              params: dict[str, Any]) -> tuple[Any, str, bool]:
    """(client, run id, resumed): the run recorded in ``run_dir``, or a new one with the params logged."""
    import mlflow
    from mlflow.entities import Param, RunStatus
    from mlflow.exceptions import MlflowException

    from sdm.tracking import ensure_experiment, tracking_uri

    uri = tracking_uri(config)
    experiment_id = ensure_experiment(experiment, config)
    client = mlflow.MlflowClient(tracking_uri=uri)
    record = run_dir / RUN_FILE
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("tracking_uri") == uri:
            try:
                client.get_run(saved["run_id"])
                client.update_run(saved["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
                return client, saved["run_id"], True
            except MlflowException:
                pass  # deleted from the store: start a new one
    run = client.create_run(experiment_id, run_name=run_name, tags={"sdm.kind": "train", "sdm.run_dir": str(run_dir)})
    run_id = run.info.run_id
    all_params = {**flatten(to_dict(config)), **{k: str(v) for k, v in params.items()}}
    items = [Param(k, v[:6000]) for k, v in all_params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment": experiment}, indent=1))
    tmp.replace(record)
    return client, run_id, False


def end_run(client: Any, run_id: str, ok: bool) -> None:
    from mlflow.entities import RunStatus

    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def build_payload(config: Config, run_dir: Path, phases: list[str], pre: Preflight, init_from: Path | None,
                  meta: dict[str, Any], worker_hooks: Sequence[Hook] = ()) -> WorkerPayload:
    """What every worker gets (see ``WorkerPayload``)."""
    return WorkerPayload(config=config, run_dir=run_dir, phases=tuple(phases),
                         init_from=init_from.resolve() if init_from is not None else None,
                         data_version=pre.data_version, splits=tuple(pre.manifest.splits), meta=meta,
                         worker_hooks=tuple(worker_hooks))


def _run_local(payload: WorkerPayload, hooks: Hook) -> None:
    """One worker in this process (no Ray): checkpoints straight into the run directory."""
    import torch

    from sdm.train.checkpoint import LocalCheckpointSink, local_resume_point
    from sdm.train.distributed import WorkerContext
    from sdm.train.worker import run_worker

    ctx = WorkerContext(device=torch.device("cuda" if payload.config.train.use_gpu else "cpu"))
    run_worker(payload, ctx=ctx, sink=LocalCheckpointSink(payload.run_dir, payload.config.train.keep_checkpoints, ctx),
               hooks=hooks, resume=local_resume_point(payload.run_dir))


def _holding_run_lock(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """``fn`` (``train``) with the run folder's lock held for the whole call (``sdm.locks``): a second
    ``sdm train`` of the same run fails at once naming the first, instead of both pruning each other's
    checkpoints and logging into one MLflow run."""

    @functools.wraps(fn)
    def locked(config: Config, *, run_name: str, **options: Any) -> TrainResult:
        from sdm.locks import lock_target

        check_run_name(run_name)
        run_dir = Path(config.train.storage_path).resolve() / run_name
        with lock_target(run_dir, f"training run {run_name!r} ({run_dir})"):
            return fn(config, run_name=run_name, **options)

    return locked


@_holding_run_lock
def train(
    config: Config,
    *,
    run_name: str,
    workers: int | None = None,
    use_gpu: bool | None = None,
    phase: str | None = None,
    init_from: str | Path | None = None,
    local: bool = False,
    log_mlflow: bool = True,
    experiment: str | None = None,
    verbose: bool = False,
    echo: Callable[[str], Any] | None = None,
    worker_hooks: Sequence[Hook] = (),
    init_label: str | None = None,
    tracking_policy: BestEffortPolicy | None = None,
) -> TrainResult:
    """Train (or resume) run ``run_name`` under ``train.storage_path``; returns where the final checkpoint is.

    ``workers`` / ``use_gpu`` override ``train.workers`` / ``train.use_gpu``;
    ``phase`` is all, pretrain or finetune (default ``train.phases``);
    ``local`` runs one worker in this process instead of on Ray.
    ``worker_hooks`` run inside every worker on every rank (picklable: they travel to Ray workers);
    each sees ``Launching`` here first and may refuse the run with a ConfigError.
    ``init_label`` names where ``init_from`` came from (``models:/NAME/VERSION``) in the
    final checkpoint's meta.json (``init_from``; default: the directory).
    ``tracking_policy`` bounds the retries of MLflow calls (``sdm.best_effort``; default: 3 tries, 30 s to
    drain at the end).
    """
    say = echo or (lambda s: print(s, file=sys.stdout, flush=True))
    check_run_name(run_name)
    tc = config.train
    workers = 1 if local else (tc.workers if workers is None else workers)
    use_gpu = tc.use_gpu if use_gpu is None else use_gpu
    if use_gpu and local:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--gpu with --local: this machine has no CUDA device")
    config = absolute_paths(dataclasses.replace(config, train=dataclasses.replace(tc, workers=workers,
                                                                                   use_gpu=use_gpu)))
    run_dir = Path(config.train.storage_path) / run_name
    phases = resolve_phases(config, phase)
    init_path = Path(init_from) if init_from else None
    # A rerun with every planned step done trains nothing: final/ is exported here, no Ray cluster started
    # or probed for it (sdm.train.finished).
    done = None if local else finished_resume_point(config, run_dir, phases)
    pre = preflight(config, run_dir, workers=workers, phases=phases, init_from=init_path,
                    ray=not local and done is None, tracking=log_mlflow)
    Hooks(worker_hooks).handle(Launching(workers=workers, run_dir=run_dir))
    for note in pre.notes:
        say(f"[train] note: {note}")
    where = "this process" if local else f"{workers} Ray worker(s){' with GPUs' if use_gpu else ''}"
    if done is not None:
        where = "this process (every planned step is done: final checkpoint only, Ray not started)"
    steps = {p: getattr(config.train, p).steps for p in phases}
    planned = " + ".join(f"{p} {n} steps" for p, n in steps.items() if n)
    say(f"[train] run {run_name}: {planned} on {where}; run dir {run_dir}"
        + (f"; resuming from {pre.resume.name}" if pre.resume else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resolved(config, run_dir, "config.yaml")
    # What `sdm reproduce` needs to train this run again (sdm.reproduce.record), before any worker starts.
    from sdm.reproduce.record import RECORD_DIR, record_run

    record_dir = record_run(run_dir, config, pre.data_version, local=local, phases=phases, run_name=run_name,
                            init_from=(init_label or str(init_path.resolve())) if init_path is not None else None,
                            resume_from=pre.resume.name if pre.resume else None)

    run_log = RunLog(run_dir)
    hooks: list[Hook] = [ConsoleProgress(say), run_log]
    warn = _warner(say)
    client = run_id = sender = None
    http = contextlib.ExitStack()
    if log_mlflow:
        http.enter_context(bounded_http())  # a dead server fails a call in seconds, not minutes
        params = {"sdm.run_name": run_name, "sdm.data_version": pre.data_version, "sdm.phases": ",".join(phases),
                  "sdm.workers": workers}
        try:
            client, run_id, resumed = start_run(config, run_dir, run_name,
                                                experiment or config.register.model_name, params)
        except Exception as e:  # an outage (or a store that cannot be written): training does not depend on it
            from sdm.tracking import tracking_uri

            client = run_id = None
            warn(f"warning: MLflow ({tracking_uri(config)}) unreachable, training without MLflow tracking: "
                 f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}; the console and "
                 f"{run_log.path} keep everything")
            run_log.note("tracking", status="unavailable", error=f"{type(e).__name__}: {e}"[:1000])
        else:
            from sdm.best_effort import BestEffortSender
            from sdm.tracking import tracking_uri

            sender = BestEffortSender(f"MLflow ({tracking_uri(config)})", warn, tracking_policy)
            hooks.append(MlflowLogger(client, run_id, sender))
            sender.submit("artifacts", functools.partial(client.log_artifacts, run_id, str(record_dir), RECORD_DIR))
            say(f"[train] MLflow run {run_id}{' (continued)' if resumed else ''}")
    meta = {"run_name": run_name, "class_names": pre.manifest.class_names, "palette": pre.manifest.palette,
            "mlflow_run_id": run_id, "data_version": pre.data_version, "git_commit": git_commit()}
    if init_path is not None:
        meta["init_from"] = init_label or str(init_path.resolve())
    payload = build_payload(config, run_dir, phases, pre, init_path, meta, worker_hooks)

    ok = False
    driver_hooks = GuardedHooks(hooks, warn)
    tracking = None
    try:
        if local:
            _run_local(payload, driver_hooks)
        elif done is not None:
            finish_in_process(payload, driver_hooks, done)
        else:
            from sdm.train.ray_run import run_on_ray

            run_on_ray(payload, driver_hooks, verbose=verbose, warn=warn)
        ok = True
    finally:
        with http:
            if sender is not None:
                sender.submit("status", lambda: end_run(client, run_id, ok))
                tracking = _tracking_summary(sender.close(), run_log, say)
        if driver_hooks.failures:
            warn(f"warning: recording the run's events failed {sum(driver_hooks.failures.values())} time(s) "
                 f"({driver_hooks.failures}); the checkpoints and final weights do not depend on it")
    total = sum(steps.values())
    return TrainResult(run_dir=run_dir, final_dir=run_dir / FINAL_DIR, global_step=total, mlflow_run_id=run_id,
                       tracking=tracking)


def _warner(say: Callable[[str], Any]) -> Callable[[str], None]:
    """A warning printer that cannot raise (a warning about a failed hook may come from a failed console)."""

    def warn(text: str) -> None:
        try:
            say(f"[train] {text}")
        except Exception:
            print(f"[train] {text}", file=sys.stderr, flush=True)

    return warn


def _tracking_summary(report: Any, run_log: RunLog, say: Callable[[str], Any]) -> dict[str, Any]:
    """The MLflow calls sent and dropped, on the console (when any were dropped) and as a train_log.jsonl line."""
    summary = report.summary()
    if report.dropped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.dropped_by_kind.items()))
        say(f"[train] warning: MLflow: {report.dropped} call(s) dropped ({kinds}), {report.sent} sent; "
            f"{run_log.path} has every metric")
    try:
        run_log.note("tracking", **summary)
    except OSError as e:
        say(f"[train] warning: could not append the tracking summary to {run_log.path}: {e}")
    return summary
