"""One worker's whole run: build the model, resume or initialise, train each phase, export the final checkpoint.

Every worker runs ``run_worker`` on the same ``WorkerPayload`` (under Ray, or
in-process for ``sdm train --local``); the caller supplies only what differs:
the worker context (rank, device), the checkpoint sink, the resume point and
rank 0's hooks. ``run_training`` is the same run from its parts (tests and
benchmarks give it their own dataset). Rank 0 also draws the EMA sample grid:
label map | guided EMA sample | real image, for fixed label maps and seed, so
grids from successive steps show the model improving on the same inputs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from sdm.checksums import verify_files
from sdm.config import Config, ConfigError
from sdm.diffusion import GaussianDiffusion
from sdm.model import EMA_FILE, MODEL_FILE, SDMUNet, read_checkpoint_meta, recorded_sha256, save_checkpoint
from sdm.sampling import generate
from sdm.state_dict_check import check_state_dict
from sdm.train.checkpoint import CheckpointSink, ResumePoint, TrainState, read_train_state
from sdm.train.data_order import TrainingDataset, derive_seed, training_dataset
from sdm.train.distributed import WorkerContext, barrier
from sdm.train.events import CheckpointSkipped, Hook, Hooks, PhaseInfo, RunEnd
from sdm.train.loop import LoopParts, SampleRenderer, plan_phases, train_phase
from sdm.train.optim import EMA
from sdm.viz import colorize, save_grid

FINAL_DIR = "final"
GRID_ROWS = 8


@dataclass(frozen=True)
class WorkerPayload:
    """What every worker gets. It crosses to Ray workers on any node (Ray pickles it), so it holds data and
    picklable hooks only."""

    config: Config  # resolved, with absolute paths (workers may run elsewhere)
    run_dir: Path  # absolute
    phases: tuple[str, ...]
    init_from: Path | None = None  # absolute: a model checkpoint directory that starts a fresh run
    data_version: str = ""
    splits: tuple[str, ...] = ()  # the prepared data's splits (the sample grid uses val when there is one)
    meta: dict[str, Any] | None = None  # written into the final checkpoint's meta
    # Hooks that run inside every worker, on every rank (e.g. a test's fault injection).
    worker_hooks: tuple[Hook, ...] = ()


def run_worker(payload: WorkerPayload, *, ctx: WorkerContext, sink: CheckpointSink, hooks: Hook | None = None,
               resume: Path | TrainState | ResumePoint | None = None, resume_name: str | None = None) -> Path:
    """This worker's part of the run ``payload`` describes; returns ``run_dir/final``.

    ``hooks`` get this rank's events besides ``payload.worker_hooks`` (rank 0:
    the driver's hooks or the relay to them); ``resume`` as for ``run_training``.
    """
    config = payload.config
    if ctx.device.type == "cpu":
        # Only the worker's share of the cores: torch's default (all cores) oversubscribes a busy machine.
        torch.set_num_threads(max(1, int(config.train.cpus_per_worker)))
    meta = payload.meta or {}
    return run_training(
        config, payload.run_dir, ctx=ctx, phases=payload.phases, sink=sink,
        hooks=Hooks([*payload.worker_hooks, *([hooks] if hooks is not None else [])]),
        dataset=training_dataset(config), resume=resume, resume_name=resume_name, init_from=payload.init_from,
        data_version=payload.data_version,
        sampler_factory=sample_grid_factory(config, list(payload.splits), meta.get("palette")), meta=meta,
    )


def build_model(config: Config, device: torch.device) -> nn.Module:
    """SDMUNet with the run's initial weights (the same on every rank: seeded from train.seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.train.seed, "init"))
        model = SDMUNet(config.model)
    return model.to(device)


def load_init_weights(directory: Path, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model, EMA) states of a checkpoint directory (contract 2 layout); EMA = model when absent."""
    weights = directory / MODEL_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: missing; --init-from wants a checkpoint directory "
                                f"({MODEL_FILE} + config.json), e.g. runs/<run-name>/final")
    # A corrupted file is a ChecksumMismatchError naming it, before safetensors reads garbage.
    verify_files(directory, recorded_sha256(directory), [MODEL_FILE, EMA_FILE])
    state = load_file(str(weights))
    check_state_dict(model, state, str(weights), "this run's config.model")
    ema_path = directory / EMA_FILE
    ema = load_file(str(ema_path)) if ema_path.exists() else state
    check_state_dict(model, ema, str(ema_path), "this run's config.model")
    return state, ema


def _start_point(plan: list[PhaseInfo], state: TrainState | None) -> tuple[int, int, dict | None]:
    """(index into plan, completed steps of that phase, optimizer state) to continue from."""
    if state is None:
        return 0, 0, None
    names = [p.name for p in plan]
    if state.phase not in names:
        if state.phase_index < plan[0].index:
            return 0, 0, None  # e.g. a pretrain checkpoint when only finetune runs: start finetune from it
        raise ConfigError(f"the run directory holds a {state.phase} checkpoint, but this run's phases are {names}")
    i = names.index(state.phase)
    if state.step >= plan[i].cfg.steps:
        return i + 1, 0, None  # that phase is done: the next starts from its weights with a fresh optimizer
    return i, state.step, state.optimizer


def run_training(
    config: Config,
    run_dir: str | Path,
    *,
    ctx: WorkerContext,
    phases: Sequence[str],
    sink: CheckpointSink,
    hooks: Hook,
    dataset: TrainingDataset,
    resume: Path | TrainState | ResumePoint | None = None,
    resume_name: str | None = None,
    init_from: Path | None = None,
    data_version: str = "",
    sampler_factory: Callable[[nn.Module], SampleRenderer | None] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Train the planned phases (resuming from ``resume`` when given); returns ``run_dir/final``.

    ``resume`` is a training checkpoint (its directory or its loaded state;
    ``resume_name`` names it in logs), or a ``ResumePoint`` (the newest intact
    checkpoint and the corrupted ones passed over, which rank 0 reports as
    ``CheckpointSkipped`` events);
    ``init_from`` a model checkpoint directory whose weights (and EMA) start a
    fresh run. ``sampler_factory`` builds rank 0's EMA sample grid. ``hooks``
    get this rank's events (``StepStart`` on every rank, the rest on rank 0).
    """
    run_dir = Path(run_dir)
    plan = plan_phases(config, phases)
    model = build_model(config, ctx.device)
    ema = EMA(model, config.train.ema_rate, warmup=config.train.ema_warmup)
    if isinstance(resume, ResumePoint):
        if ctx.is_main:
            for skipped in resume.skipped:
                hooks.handle(CheckpointSkipped(str(skipped.path), skipped.reason))
        resume_name = resume_name or resume.name
        state: TrainState | None = resume.state
    elif isinstance(resume, (str, Path)):
        resume_name = resume_name or Path(resume).name
        state = read_train_state(resume)
    else:
        state = resume
    resume_name = resume_name or ("checkpoint" if state is not None else "")
    if state is not None:
        check_state_dict(model, state.model, resume_name, "this run's config.model")
        model.load_state_dict(state.model)
        ema.load_state_dict(state.ema, num_updates=state.ema_updates)
    elif init_from is not None:
        weights, ema_weights = load_init_weights(Path(init_from), model)
        model.load_state_dict(weights)
        # The EMA warmup continues where the source run left it (so pretrain + finetune in two
        # calls equals one call).
        init_meta = read_checkpoint_meta(init_from)
        ema.load_state_dict(ema_weights, num_updates=int(init_meta.get("ema_updates", init_meta.get("step", 0))))
    ema.to(ctx.device)

    net: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    diffusion = GaussianDiffusion(config.diffusion, learn_sigma=config.model.learn_sigma)
    sampler = sampler_factory(model) if (sampler_factory is not None and ctx.is_main) else None
    objective = None
    if config.distill.stage:  # a stage of `sdm distill`: the loss against a frozen teacher (sdm.distill)
        from sdm.distill.objective import make_objective

        objective = make_objective(config, ctx.device)
    parts = LoopParts(config=config, ctx=ctx, model=model, net=net, ema=ema, diffusion=diffusion, dataset=dataset,
                      sink=sink, hooks=hooks, run_dir=run_dir, data_version=data_version, sampler=sampler,
                      objective=objective)

    first, start_step, optimizer_state = _start_point(plan, state)
    for i in range(first, len(plan)):
        p = plan[i]
        begin = start_step if i == first else 0
        resumed_from = resume_name if (state is not None and i == first) else ""
        if begin >= p.steps:
            continue
        train_phase(parts, dataclasses.replace(p, start_step=begin, resumed_from=resumed_from),
                    optimizer_state if i == first else None)

    final = run_dir / FINAL_DIR
    if ctx.is_main:
        total = plan[-1].total_steps
        info_meta = {**(meta or {}), "step": total, "phases": {p.name: p.cfg.steps for p in plan},
                     "data_version": data_version, "world_size": ctx.world_size, "ema_updates": ema.num_updates}
        save_checkpoint(final, model.state_dict(), config, ema_state=ema.state_dict(), meta=info_meta)
        hooks.handle(RunEnd(final, {"global_step": total, "resumed_from": resume_name}))
    barrier(ctx)
    return final


class EmaSampleGrid:
    """Renders guided samples of the EMA weights for fixed label maps."""

    def __init__(self, config: Config, model: nn.Module, items: list[dict[str, Any]],
                 palette: list[list[int]] | None = None) -> None:
        if not items:
            raise ValueError("the sample grid needs at least one label map")
        self.config = config
        # A private copy on CPU-or-model-device: loading EMA weights must not touch the training model.
        self.model = copy.deepcopy(model).eval()
        self.labels = torch.stack([it["label"] for it in items]).long()
        self.instances = (torch.stack([it["instance"] for it in items]).long()
                          if all(it.get("instance") is not None for it in items) else None)
        self.real = [((it["image"].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for it in items]
        self.palette = palette

    @torch.no_grad()
    def render(self, ema_state: dict[str, torch.Tensor], path: Path, guidance_scale: float) -> Path:
        """Sample with ``config.sample`` (sampler, steps, seed) at ``guidance_scale``; save the grid PNG."""
        self.model.load_state_dict(ema_state)
        sc = self.config.sample
        samples = generate(self.model, self.config, self.labels, self.instances, guidance_scale=guidance_scale,
                           sampler=sc.sampler, steps=sc.steps, seed=sc.seed, batch_size=sc.batch_size, eta=sc.eta)
        rows = [[colorize(label.numpy(), self.palette), np.asarray(sample), real]
                for label, sample, real in zip(self.labels, samples, self.real, strict=True)]
        return save_grid(rows, path)


def grid_items(config: Config, splits: list[str], rows: int = GRID_ROWS) -> list[dict[str, Any]]:
    """The first ``rows`` items of the val split (train when there is none), unaugmented."""
    from sdm.data.loader import PreparedDataset

    split = "val" if "val" in splits else "train"
    ds = PreparedDataset(config.data.prepared, split=split, augment=False, shuffle=False)
    return [ds[i] for i in range(min(rows, len(ds)))]


def sample_grid_factory(config: Config, splits: list[str], palette: list[list[int]] | None
                        ) -> Callable[[nn.Module], SampleRenderer]:
    """Builds rank 0's ``EmaSampleGrid`` from the training model (a private copy is made)."""

    def make(model: nn.Module) -> SampleRenderer:
        return EmaSampleGrid(config, model, grid_items(config, splits), palette=palette)

    return make
