"""Training checkpoints: everything needed to resume, as safetensors + JSON.

A training checkpoint is a directory ``checkpoint-<phase>-<step:07d>``:

- ``model.safetensors``: the raw model weights;
- ``ema.safetensors``: the EMA weights (model keys);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, flattened
  to ``state/<param index>/<name>`` (AdamW: step, exp_avg, exp_avg_sq);
- ``train_state.json``: the rest (phase, step, EMA update count, the
  optimizer's param groups and non-tensor state, the resolved config, the
  data version, the byte size and sha256 of every file, and the sha256 of
  the JSON itself under ``json_sha256``).

Reading a checkpoint's JSON checks sizes (cheap: it is how checkpoints are
listed); loading one (:func:`read_train_state`) verifies every sha256 first,
so a file corrupted at the right size is a ``TrainCheckpointError`` naming the
file and "sha256 mismatch", never garbage weights. Checkpoints written before
checksums (sizes only) still load. :func:`find_resume_point` walks the
candidates newest first and resumes from the newest intact one, saying which it
skipped and why.

No generator state is stored: all randomness is derived from (seed, phase,
step, sample index) (see ``sdm.train.data_order``). Directories are written to a
temporary sibling and renamed into place; ``CheckpointStore`` keeps the last K.
Nothing here unpickles.

Where the loop's checkpoints go is a ``CheckpointSink``: ``LocalCheckpointSink``
(the run directory) here; the Ray one (Ray Train's storage) lives with the Ray
code in ``sdm.train.ray_run``, so this module never imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdm.atomic import clean_leftovers, make_temp_dir, replace_dir
from sdm.checksums import ChecksumMismatchError, digests, verify_files
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
    """Write ``state`` as a checkpoint directory, atomically (temp sibling swapped in: ``sdm.atomic``)."""
    directory = Path(directory)
    tmp = make_temp_dir(directory)
    try:
        save_file(_cpu(state.model), str(tmp / MODEL_FILE))
        save_file(_cpu(state.ema), str(tmp / EMA_FILE))
        optimizer_rest = None
        if state.optimizer is not None:
            tensors, optimizer_rest = flatten_optimizer(state.optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        # Read back from the page cache just after writing: sha256 runs at 0.5-2 GB/s per core (~0.1 s for
        # the toy model's 37 MB), small beside the steps between two checkpoints.
        sha256 = digests(tmp, files)
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
            "sha256": sha256,
        }
        (tmp / STATE_FILE).write_text(state_json_text(meta))
        # A rewrite of the same step swaps: the old checkpoint stays whole until the new one is in place.
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _json_digest(meta: dict[str, Any]) -> str:
    """sha256 of ``meta`` (without ``json_sha256``) in a canonical form that survives a JSON round trip."""
    body = {k: v for k, v in meta.items() if k != "json_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def state_json_text(meta: dict[str, Any]) -> str:
    """``meta`` as train_state.json text, with the sha256 of its own content under ``json_sha256``.

    The JSON cannot hold its own file hash, so it holds the hash of its parsed
    content: a flipped digit in a step or a learning rate is caught too."""
    plain = json.loads(json.dumps(meta, default=str))  # what a reader will parse (tuples -> lists, ...)
    return json.dumps({**plain, "json_sha256": _json_digest(plain)}, indent=1)


def read_state_json(directory: str | Path) -> dict[str, Any]:
    """The ``train_state.json`` of a checkpoint, checked for format, its own sha256 and the files' sizes.

    The data files' sha256 are checked by :func:`verify_train_state` (they are read in full)."""
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
    if "json_sha256" in meta and meta["json_sha256"] != _json_digest(meta):
        raise TrainCheckpointError(f"{path}: sha256 mismatch: the file is corrupted (its content does not match "
                                   f"the json_sha256 recorded in it)")
    for name, size in meta.get("files", {}).items():
        f = directory / name
        if not f.exists() or f.stat().st_size != size:
            found = f.stat().st_size if f.exists() else "missing"
            raise TrainCheckpointError(f"{f}: incomplete checkpoint ({found} bytes, expected {size})")
    return meta


def verify_train_state(directory: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a checkpoint's JSON, sizes and every file's sha256; returns the JSON.

    Raises ``TrainCheckpointError`` naming the first bad file. A checkpoint
    written before checksums has sizes only: it is size-checked, as it was.
    """
    directory = Path(directory)
    meta = read_state_json(directory) if meta is None else meta
    try:
        verify_files(directory, meta.get("sha256", {}))
    except ChecksumMismatchError as e:
        raise TrainCheckpointError(str(e)) from None
    return meta


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise TrainCheckpointError(f"{path}: cannot read safetensors: {e}") from None


def read_train_state(directory: str | Path) -> TrainState:
    """Load a checkpoint directory written by :func:`write_train_state` (tensors on CPU)."""
    directory = Path(directory)
    meta = verify_train_state(directory)
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


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that resume passed over, and why (the first problem found)."""

    path: Path
    reason: str


def scan_checkpoints(root: str | Path) -> tuple[list[tuple[tuple[int, int], Path]], list[SkippedCheckpoint]]:
    """(complete checkpoints oldest first by (phase index, step, name), ``checkpoint-*`` folders that are not).

    Only the JSON and the sizes are checked here (cheap); temp folders of
    writes in progress start with a dot and are not looked at."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    found, bad = [], []
    for d in root.iterdir():
        if not d.is_dir() or not d.name.startswith(PREFIX):
            continue
        try:
            meta = read_state_json(d)
        except TrainCheckpointError as e:
            bad.append(SkippedCheckpoint(d, str(e)))
            continue
        found.append(((int(meta["phase_index"]), int(meta["step"])), d))
    return sorted(found), sorted(bad, key=lambda s: s.path.name)


def list_checkpoints(root: str | Path) -> list[tuple[tuple[int, int], Path]]:
    """Complete training checkpoints directly under ``root``, oldest first, by (phase index, step)."""
    return scan_checkpoints(root)[0]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete training checkpoint under ``root``, or None (sizes checked, not sha256)."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


@dataclass
class ResumePoint:
    """Where a run continues: the newest intact checkpoint (``state`` None: none) and what was passed over."""

    state: TrainState | None = None
    name: str = ""  # the checkpoint's folder name
    skipped: list[SkippedCheckpoint] = field(default_factory=list)


def resume_candidates(root: str | Path, first: Sequence[Path] = ()) -> tuple[list[Path], list[SkippedCheckpoint]]:
    """(``first``, then the checkpoints under ``root`` newest first; the ``checkpoint-*`` folders unreadable as
    checkpoints). ``first`` is e.g. the checkpoint Ray Train hands a restarted worker group."""
    found, bad = scan_checkpoints(root)
    seen = {Path(p).resolve() for p in first}
    rest = [p for _, p in reversed(found) if p.resolve() not in seen]
    return [*map(Path, first), *rest], bad


def find_resume_point(candidates: Sequence[Path], skipped: Sequence[SkippedCheckpoint] = ()) -> ResumePoint:
    """Load the first of ``candidates`` (newest first) that is intact: JSON, sizes and every sha256.

    A corrupted or incomplete one is skipped and recorded with the reason,
    so the run resumes from the one before instead of failing on it (or
    worse, training on from garbage weights). Problems that are not about the
    checkpoint's integrity (another model shape, ...) are raised by the caller
    when it uses the state, as before.
    """
    passed = list(skipped)
    for path in candidates:
        try:
            state = read_train_state(path)
        except TrainCheckpointError as e:
            passed.append(SkippedCheckpoint(Path(path), str(e)))
            continue
        return ResumePoint(state, Path(path).name, passed)
    return ResumePoint(None, "", passed)


def local_resume_point(root: str | Path) -> ResumePoint:
    """The newest intact checkpoint under ``root`` (see :func:`find_resume_point`)."""
    candidates, bad = resume_candidates(root)
    return find_resume_point(candidates, bad)


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
        # Leftovers of writes interrupted by a crash (only a dead writer's: sdm.atomic.clean_leftovers).
        clean_leftovers(self.root, f"{PREFIX}*")

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
