"""Checks before any worker starts: each bad input is one clear error naming the file or key.

- the prepared data is missing (the message names the command that makes it), or a shard's bytes differ
  from manifest.json's sha256;
- the dataset's classes / image size differ from the model's;
- the global batch does not split evenly over the workers, or exceeds the training split;
- a resume (or ``--init-from``) whose model shape differs from this config;
- a ``RAY_ADDRESS`` that does not answer, or a node of a multi-node cluster that cannot see the data or the
  run folder (``sdm.train.cluster_storage``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.config import Config, ConfigError, ModelConfig, from_dict
from sdm.data.manifest import Manifest, read_manifest
from sdm.data.shards import verify_shards
from sdm.errors import InputError
from sdm.train.checkpoint import latest_checkpoint, read_state_json
from sdm.train.loop import plan_phases

# Model settings that change no parameter shape (how it runs, not what it is).
RUNTIME_MODEL_KEYS = {"use_checkpoint", "use_fp16", "dropout"}


class PreflightError(InputError):
    """An input problem found before training starts."""


@dataclass
class Preflight:
    manifest: Manifest
    data_version: str
    train_items: int
    resume: Path | None  # the newest training checkpoint of this run dir, if any
    resume_meta: dict[str, Any] | None
    notes: list[str]


def model_shape_diff(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """Model keys whose values differ between a and b (ignoring runtime-only keys)."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k: (da[k], db[k]) for k in da if k not in RUNTIME_MODEL_KEYS and da[k] != db.get(k)}


def _format_diff(diff: dict[str, tuple[Any, Any]], left: str, right: str) -> str:
    return "; ".join(f"model.{k}: {left} {v[0]!r}, {right} {v[1]!r}" for k, v in diff.items())


def check_config(config: Config, workers: int, phases: list[str]) -> None:
    tc = config.train
    plan_phases(config, phases)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1 worker")
    if tc.batch_size % workers:
        raise ConfigError(f"train.batch_size {tc.batch_size} is not divisible by {workers} workers: "
                          f"use a multiple of {workers} (e.g. {max(workers, tc.batch_size // workers * workers)})")
    # A student's network takes the guidance scale as an input: only a stage of `sdm distill` can train it,
    # and ordinary training would fail at its first forward, after the workers started.
    if config.model.guidance_embed and not config.distill.stage:
        raise ConfigError("model.guidance_embed is true (a distilled student's network) but distill.stage is empty: "
                          "ordinary training cannot train it; distil a student with `sdm distill --teacher ...`, "
                          "or train with model.guidance_embed false")


def check_data(config: Config, manifest: Manifest, prepared: Path) -> int:
    """The number of training items; errors when the data cannot feed this model."""
    if manifest.num_classes != config.model.num_classes:
        raise PreflightError(f"{prepared / 'manifest.json'}: the dataset has {manifest.num_classes} classes but "
                             f"model.num_classes is {config.model.num_classes}; set "
                             f"--set model.num_classes={manifest.num_classes} (or prepare the matching dataset)")
    if list(manifest.image_size) != list(config.model.image_size):
        raise PreflightError(f"{prepared / 'manifest.json'}: images are {manifest.image_size} but model.image_size "
                             f"is {config.model.image_size}; prepare the data at that size (data.image_size) "
                             f"or change the model")
    items = int(manifest.counts.get("train", 0))
    if items < config.train.batch_size:
        raise PreflightError(f"{prepared}: the train split has {items} examples, fewer than the global batch "
                             f"train.batch_size={config.train.batch_size}")
    return items


def check_resume(config: Config, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The run dir's newest checkpoint; an error when its model differs from ``config.model``."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None, None
    meta = read_state_json(latest)
    saved = from_dict(meta["config"])
    diff = model_shape_diff(saved.model, config.model)
    if diff:
        raise PreflightError(f"{latest}: this run was trained with a different model "
                             f"({_format_diff(diff, 'checkpoint', 'now')}); use a new --run-name, "
                             f"or the checkpoint's settings to resume it")
    return latest, meta


def check_init_from(config: Config, init_from: Path) -> None:
    from sdm.model import read_checkpoint_config

    saved = read_checkpoint_config(init_from)
    diff = model_shape_diff(saved.model, config.model)
    if diff:
        raise PreflightError(f"{init_from}: --init-from weights are of a different model "
                             f"({_format_diff(diff, 'checkpoint', 'this run')})")


def _data_part(version: str) -> str:
    """``"dvc:<hash>@<commit>"`` -> ``"dvc:<hash>"``: the part that names the data."""
    return version.split("@", 1)[0]


def preflight(config: Config, run_dir: Path, *, workers: int, phases: list[str],
              init_from: Path | None = None, ray: bool = True, tracking: bool = False) -> Preflight:
    """Run every check; returns what the launch needs (manifest, data version, resume point).

    ``ray`` (the run goes to Ray, not ``--local``): a ``RAY_ADDRESS`` must answer, and on a cluster of
    several nodes every node must see data.prepared and train.storage_path. ``tracking`` (the run logs to
    MLflow): the tracking store answers within a few seconds (``sdm.services.tracking_probe``)."""
    check_config(config, workers, phases)
    prepared = Path(config.data.prepared)
    manifest = read_manifest(prepared)
    items = check_data(config, manifest, prepared)
    # A corrupt or replaced shard is refused here, before a run folder or an MLflow run exists.
    verify_shards(prepared, manifest)
    from sdm.data.version import data_version

    version = data_version(prepared)
    if ray:
        from sdm.train.cluster_storage import cluster_preflight

        cluster_preflight(config.train.storage_path, config.data.prepared)
    if tracking:  # the run logs to MLflow: a store that does not answer is an error now, not hours of untracked run
        from sdm.services import NotChecked
        from sdm.services.tracking_probe import probe_tracking

        try:
            probe_tracking(config, write=False)
        except NotChecked:  # a store kind sdm cannot probe (e.g. databricks): MLflow's own errors will speak
            pass
    resume, meta = check_resume(config, run_dir)
    notes: list[str] = []
    if resume is not None and meta is not None:
        # The version string ends in "@<git commit>": a new code commit alone is not a data change.
        if meta.get("data_version") and _data_part(meta["data_version"]) != _data_part(version):
            notes.append(f"the data changed since {resume.name} (data version {meta['data_version']} -> {version})")
        old_batch = meta["config"].get("train", {}).get("batch_size")
        if old_batch != config.train.batch_size:
            notes.append(f"train.batch_size changed since {resume.name} ({old_batch} -> {config.train.batch_size}): "
                         f"the data order continues at the new batch size")
    if init_from is not None:
        if resume is not None:
            notes.append(f"--init-from {init_from} is ignored: resuming from {resume}")
        else:
            check_init_from(config, init_from)
    return Preflight(manifest, version, items, resume, meta, notes)
