"""``sdm train`` as a function: checks, MLflow run, then the workers (on Ray, or in this process).

The driver owns the run's visibility: the progress line, ``train_log.jsonl``
and MLflow logging are hooks fed by rank 0's events (relayed from the Ray
workers). Everything that can be wrong with the input is checked here, before
any worker starts (``sdm.train.preflight``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.config import Config, ConfigError, to_dict, write_resolved
from sdm.registry.lineage import git_commit
from sdm.train.hooks import HookList, TrainHooks
from sdm.train.phases import resolve_phases
from sdm.train.preflight import Preflight, preflight
from sdm.train.progress import ConsoleProgress
from sdm.train.run_log import RunLog


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    global_step: int
    mlflow_run_id: str | None


def absolute_paths(config: Config) -> Config:
    """The config with data.prepared and train.storage_path absolute (workers may run elsewhere)."""
    data = dataclasses.replace(config.data, prepared=str(Path(config.data.prepared).resolve()))
    train = dataclasses.replace(config.train, storage_path=str(Path(config.train.storage_path).resolve()))
    return dataclasses.replace(config, data=data, train=train)


def check_run_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"--run-name {name!r}: expected a plain folder name (no slashes)")
    return name


def build_payload(config: Config, run_dir: Path, phases: list[str], pre: Preflight, init_from: Path | None,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """What every worker gets (plain data, so it crosses to Ray workers on any node)."""
    return {
        "config": to_dict(config),
        "run_dir": str(run_dir),
        "phases": phases,
        "init_from": str(init_from.resolve()) if init_from is not None else None,
        "data_version": pre.data_version,
        "splits": pre.manifest.splits,
        "meta": meta,
        "use_gpu": config.train.use_gpu,
        "cpus_per_worker": config.train.cpus_per_worker,
    }


def _run_local(payload: dict[str, Any], hooks: TrainHooks) -> None:
    """One worker in this process (no Ray): checkpoints straight into the run directory."""
    import torch

    from sdm.config import from_dict
    from sdm.train.checkpoint import latest_checkpoint
    from sdm.train.data_setup import sample_grid_factory, training_dataset
    from sdm.train.distributed import WorkerContext
    from sdm.train.runner import run_training
    from sdm.train.sinks import LocalCheckpointSink

    config = from_dict(payload["config"])
    device = torch.device("cuda" if payload["use_gpu"] else "cpu")
    if device.type == "cpu":
        # The same threads a Ray worker gets: torch's default (all cores) oversubscribes a busy machine.
        torch.set_num_threads(max(1, int(payload["cpus_per_worker"])))
    ctx = WorkerContext(device=device)
    run_dir = Path(payload["run_dir"])
    run_training(
        config, run_dir, ctx=ctx, phases=payload["phases"],
        sink=LocalCheckpointSink(run_dir, config.train.keep_checkpoints, ctx), hooks=hooks,
        dataset=training_dataset(config), resume=latest_checkpoint(run_dir),
        init_from=Path(payload["init_from"]) if payload["init_from"] else None,
        data_version=payload["data_version"],
        sampler_factory=sample_grid_factory(config, payload["splits"], payload["meta"].get("palette")),
        meta=payload["meta"],
    )


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
) -> TrainResult:
    """Train (or resume) run ``run_name`` under ``train.storage_path``; returns where the final checkpoint is.

    ``workers`` / ``use_gpu`` override ``train.workers`` / ``train.use_gpu``;
    ``phase`` is all, pretrain or finetune (default ``train.phases``);
    ``local`` runs one worker in this process instead of on Ray.
    """
    from sdm.train.mlflow_hook import MlflowLogger, end_run, start_run
    from sdm.train.runner import FINAL_DIR

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
    pre = preflight(config, run_dir, workers=workers, phases=phases, init_from=init_path)
    for note in pre.notes:
        say(f"[train] note: {note}")
    where = "this process" if local else f"{workers} Ray worker(s){' with GPUs' if use_gpu else ''}"
    steps = {p: getattr(config.train, p).steps for p in phases}
    planned = " + ".join(f"{p} {n} steps" for p, n in steps.items() if n)
    say(f"[train] run {run_name}: {planned} on {where}; run dir {run_dir}"
        + (f"; resuming from {pre.resume.name}" if pre.resume else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resolved(config, run_dir, "config.yaml")

    hooks: list[TrainHooks] = [ConsoleProgress(say), RunLog(run_dir)]
    client = run_id = None
    if log_mlflow:
        params = {"sdm.run_name": run_name, "sdm.data_version": pre.data_version, "sdm.phases": ",".join(phases),
                  "sdm.workers": workers}
        client, run_id, resumed = start_run(config, run_dir, run_name, experiment or config.register.model_name,
                                            params)
        hooks.append(MlflowLogger(client, run_id))
        say(f"[train] MLflow run {run_id}{' (continued)' if resumed else ''}")
    meta = {"run_name": run_name, "class_names": pre.manifest.class_names, "palette": pre.manifest.palette,
            "mlflow_run_id": run_id, "data_version": pre.data_version, "git_commit": git_commit()}
    payload = build_payload(config, run_dir, phases, pre, init_path, meta)

    ok = False
    try:
        if local:
            _run_local(payload, HookList(hooks))
        else:
            from sdm.train.ray_dispatch import RaySettings, run_on_ray

            settings = RaySettings(workers=workers, use_gpu=use_gpu, cpus_per_worker=config.train.cpus_per_worker,
                                   storage_path=Path(config.train.storage_path), run_name=run_name,
                                   max_failures=config.train.max_failures,
                                   keep_checkpoints=config.train.keep_checkpoints, verbose=verbose)
            run_on_ray(payload, settings, HookList(hooks))
        ok = True
    finally:
        if client is not None and run_id is not None:
            end_run(client, run_id, ok)
    total = sum(getattr(config.train, p).steps for p in phases)
    return TrainResult(run_dir=run_dir, final_dir=run_dir / FINAL_DIR, global_step=total, mlflow_run_id=run_id)
