"""Training checkpoints: everything needed to resume, as safetensors + JSON.

A training checkpoint is a directory ``checkpoint-<phase>-<step:07d>``:

- ``model.safetensors``: the raw model weights;
- ``ema.safetensors``: the EMA weights (model keys);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, flattened
  to ``state/<param index>/<name>`` (AdamW: step, exp_avg, exp_avg_sq);
- ``train_state.json``: the rest (phase, step, EMA update count, the
  optimizer's param groups and non-tensor state, the resolved config, the
  data version, the byte size of every file, for a completeness check).

No generator state is stored: all randomness is derived from (seed, phase,
step, sample index) (see ``sdm.train.data_order``). Directories are written to a
temporary sibling and renamed into place; ``CheckpointStore`` keeps the last K.
Nothing here unpickles.

Where the loop's checkpoints go is a ``CheckpointSink``: ``LocalCheckpointSink``
(the run directory) here; the Ray one (Ray Train's storage) lives with the Ray
code in ``sdm.train.ray_run``, so this module never imports Ray.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdm.errors import InputError
from sdm.train.distributed import WorkerContext, barrier

FORMAT = "sdm-train-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
PREFIX = "checkpoint-"


class TrainCheckpointError(InputError):
    """A training checkpoint that is incomplete, unreadable or does not fit."""


@dataclass
class TrainState:
    """One resumable point of a run: the end of ``step`` completed steps of ``phase``."""

    phase: str
    phase_index: int
    step: int
    phase_steps: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    ema_updates: int
    optimizer: dict[str, Any] | None
    config: dict[str, Any]
    data_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def phase_done(self) -> bool:
        return self.step >= self.phase_steps

    @property
    def order_key(self) -> tuple[int, int]:
        return (self.phase_index, self.step)


def checkpoint_name(phase: str, step: int) -> str:
    return f"{PREFIX}{phase}-{step:07d}"


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                extra.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state_extra": extra}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`: a state_dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest.get("state_extra", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def write_train_state(directory: str | Path, state: TrainState) -> Path:
    """Write ``state`` as a checkpoint directory, atomically (temp sibling + rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(_cpu(state.model), str(tmp / MODEL_FILE))
        save_file(_cpu(state.ema), str(tmp / EMA_FILE))
        optimizer_rest = None
        if state.optimizer is not None:
            tensors, optimizer_rest = flatten_optimizer(state.optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "phase": state.phase,
            "phase_index": state.phase_index,
            "step": state.step,
            "phase_steps": state.phase_steps,
            "ema_updates": state.ema_updates,
            "optimizer": optimizer_rest,
            "data_version": state.data_version,
            "rng": "derived from (train.seed, phase, step, sample index); no generator state is stored",
            "config": state.config,
            "extra": state.extra,
            "files": files,
        }
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1, default=str))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_state_json(directory: str | Path) -> dict[str, Any]:
    """The ``train_state.json`` of a checkpoint, checked for format and completeness."""
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.exists():
        raise TrainCheckpointError(f"{directory}: not a training checkpoint (no {STATE_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainCheckpointError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TrainCheckpointError(f"{path}: not an {FORMAT} file")
    if meta.get("version") != VERSION:
        raise TrainCheckpointError(f"{path}: version {meta.get('version')} is not supported (expected {VERSION})")
    for name, size in meta.get("files", {}).items():
        f = directory / name
        if not f.exists() or f.stat().st_size != size:
            found = f.stat().st_size if f.exists() else "missing"
            raise TrainCheckpointError(f"{f}: incomplete checkpoint ({found} bytes, expected {size})")
    return meta


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise TrainCheckpointError(f"{path}: cannot read safetensors: {e}") from None


def read_train_state(directory: str | Path) -> TrainState:
    """Load a checkpoint directory written by :func:`write_train_state` (tensors on CPU)."""
    directory = Path(directory)
    meta = read_state_json(directory)
    optimizer = None
    if meta.get("optimizer") is not None:
        optimizer = unflatten_optimizer(_load(directory / OPTIMIZER_FILE), meta["optimizer"])
    return TrainState(
        phase=meta["phase"],
        phase_index=int(meta["phase_index"]),
        step=int(meta["step"]),
        phase_steps=int(meta["phase_steps"]),
        model=_load(directory / MODEL_FILE),
        ema=_load(directory / EMA_FILE),
        ema_updates=int(meta["ema_updates"]),
        optimizer=optimizer,
        config=meta["config"],
        data_version=meta.get("data_version", ""),
        extra=meta.get("extra", {}),
    )


def list_checkpoints(root: str | Path) -> list[tuple[tuple[int, int], Path]]:
    """Complete training checkpoints directly under ``root``, oldest first, by (phase index, step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if not d.is_dir() or not d.name.startswith(PREFIX):
            continue
        try:
            meta = read_state_json(d)
        except TrainCheckpointError:
            continue  # a half-written or foreign directory is not a resume point
        found.append(((int(meta["phase_index"]), int(meta["step"])), d))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete training checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


class CheckpointStore:
    """Checkpoints in one folder (the run directory), keeping the newest ``keep``."""

    def __init__(self, root: str | Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def save(self, state: TrainState) -> Path:
        path = write_train_state(self.root / checkpoint_name(state.phase, state.step), state)
        self.prune()
        return path

    def prune(self) -> None:
        for _, old in list_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        # Leftovers of writes interrupted by a crash.
        for stray in self.root.glob(f".{PREFIX}*.tmp-*"):
            shutil.rmtree(stray, ignore_errors=True)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)


class CheckpointSink(Protocol):
    """Where checkpoints go (a local folder, or Ray Train's storage). Called on every rank."""

    def save(self, make_state: Callable[[], TrainState], name: str, metrics: dict[str, float]) -> str:
        """Persist the state (built on rank 0 only); returns where it went."""
        ...


class LocalCheckpointSink:
    """Runs without Ray: rank 0 writes ``<run_dir>/checkpoint-<phase>-<step>/`` (the newest ``keep`` kept)."""

    def __init__(self, run_dir: str | Path, keep: int, ctx: WorkerContext) -> None:
        self.store = CheckpointStore(run_dir, keep)
        self.ctx = ctx

    def save(self, make_state: Callable[[], TrainState], name: str, metrics: dict[str, float]) -> str:
        path = self.store.save(make_state()) if self.ctx.is_main else self.store.root / name
        barrier(self.ctx)  # nobody runs ahead of a checkpoint that might be needed to resume
        return str(path)
