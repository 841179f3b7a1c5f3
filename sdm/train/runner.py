"""One worker's whole run: build the model, resume or initialise, train each phase, export the final checkpoint.

Called the same way by every worker (under Ray, by ``torch.multiprocessing``
in tests, or in-process for ``sdm train --local``); the caller supplies the
checkpoint sink (where checkpoints go) and the hooks (what rank 0 reports).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from sdm.config import Config, ConfigError
from sdm.diffusion import GaussianDiffusion
from sdm.model import EMA_FILE, MODEL_FILE, SDMUNet, read_checkpoint_meta, save_checkpoint
from sdm.state_dict_check import check_state_dict
from sdm.train.batches import TrainingDataset
from sdm.train.checkpoint import TrainState, read_train_state
from sdm.train.distributed import WorkerContext, barrier
from sdm.train.ema import EMA
from sdm.train.hooks import PhaseInfo, TrainHooks
from sdm.train.loop import CheckpointSink, LoopParts, SampleRenderer, train_phase
from sdm.train.phases import PlannedPhase, plan_phases
from sdm.train.rng import derive_seed

FINAL_DIR = "final"


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
    state = load_file(str(weights))
    check_state_dict(model, state, str(weights), "this run's config.model")
    ema_path = directory / EMA_FILE
    ema = load_file(str(ema_path)) if ema_path.exists() else state
    check_state_dict(model, ema, str(ema_path), "this run's config.model")
    return state, ema


def _start_point(plan: list[PlannedPhase], state: TrainState | None) -> tuple[int, int, dict | None]:
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
    hooks: TrainHooks,
    dataset: TrainingDataset,
    resume: Path | TrainState | None = None,
    resume_name: str | None = None,
    init_from: Path | None = None,
    data_version: str = "",
    sampler_factory: Callable[[nn.Module], SampleRenderer | None] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Train the planned phases (resuming from ``resume`` when given); returns ``run_dir/final``.

    ``resume`` is a training checkpoint (its directory or its loaded state;
    ``resume_name`` names it in logs);
    ``init_from`` a model checkpoint directory whose weights (and EMA) start a
    fresh run. ``sampler_factory`` builds rank 0's EMA sample grid.
    """
    run_dir = Path(run_dir)
    plan = plan_phases(config, phases)
    model = build_model(config, ctx.device)
    ema = EMA(model, config.train.ema_rate, warmup=config.train.ema_warmup)
    if isinstance(resume, (str, Path)):
        resume_name = resume_name or Path(resume).name
        state: TrainState | None = read_train_state(resume)
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
    parts = LoopParts(config=config, ctx=ctx, model=model, net=net, ema=ema, diffusion=diffusion, dataset=dataset,
                      sink=sink, hooks=hooks, run_dir=run_dir, data_version=data_version, sampler=sampler)

    first, start_step, optimizer_state = _start_point(plan, state)
    for i in range(first, len(plan)):
        p = plan[i]
        begin = start_step if i == first else 0
        resumed_from = resume_name if (state is not None and i == first) else ""
        info = PhaseInfo(name=p.name, index=p.index, steps=p.cfg.steps, start_step=begin,
                         global_offset=p.global_offset, total_steps=p.total_steps, resumed_from=resumed_from)
        if begin >= p.cfg.steps:
            continue
        train_phase(parts, info, p.cfg, optimizer_state if i == first else None)

    final = run_dir / FINAL_DIR
    if ctx.is_main:
        total = plan[-1].total_steps
        info_meta = {**(meta or {}), "step": total, "phases": {p.name: p.cfg.steps for p in plan},
                     "data_version": data_version, "world_size": ctx.world_size, "ema_updates": ema.num_updates}
        save_checkpoint(final, model.state_dict(), config, ema_state=ema.state_dict(), meta=info_meta)
        hooks.on_end(final, {"global_step": total, "resumed_from": resume_name})
    barrier(ctx)
    return final
