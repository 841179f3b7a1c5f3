"""The run's phases (pretrain, finetune) and the training loop of one: plain torch + torch.distributed.

No Ray, no MLflow here: the loop emits events (``sdm.train.events``) to the
hooks it is given and hands checkpoints to a sink (``sdm.train.checkpoint``).

Per step: this rank's slice of the global batch -> segmap (one-hot + edges) ->
guidance drop -> hybrid loss at uniform timesteps -> backward (DDP averages
gradients) -> clip -> AdamW -> EMA. Every ``log_every`` steps the metrics of
all ranks are summed and handed to the hooks; every ``checkpoint_every`` steps
and at the phase end the sink saves a checkpoint; every ``sample_every`` steps
and at the phase end rank 0 renders an EMA sample grid.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from sdm.conditioning import apply_drop, make_segmap
from sdm.config import Config, ConfigError, PhaseConfig, to_dict
from sdm.precision import autocast_context as precision_autocast
from sdm.train.checkpoint import CheckpointSink, TrainState
from sdm.train.data_order import (
    DataOrder,
    TrainingDataset,
    local_positions,
    sample_randomness,
    step_batches,
    step_torch_seed,
)
from sdm.train.distributed import WorkerContext, all_reduce_sum
from sdm.train.events import CheckpointSaved, Hook, PhaseInfo, PhaseStart, SampleSaved, StepLog, StepStart
from sdm.train.optim import EMA, lr_at, make_optimizer

PHASE_ORDER = ("pretrain", "finetune")


def resolve_phases(config: Config, phase: str | None = None) -> list[str]:
    """The phases to run: ``phase`` ("all", "pretrain", "finetune") or ``config.train.phases``."""
    if phase in (None, ""):
        names = list(config.train.phases)
    elif phase == "all":
        names = list(PHASE_ORDER)
    elif phase in PHASE_ORDER:
        names = [phase]
    else:
        raise ConfigError(f"--phase {phase!r}: expected all, pretrain or finetune")
    if not names:
        raise ConfigError("train.phases is empty: list pretrain and/or finetune")
    unknown = [n for n in names if n not in PHASE_ORDER]
    if unknown:
        raise ConfigError(f"train.phases: unknown phase(s) {unknown}; expected pretrain and/or finetune")
    if len(set(names)) != len(names) or names != sorted(names, key=PHASE_ORDER.index):
        raise ConfigError(f"train.phases {names}: each phase at most once, pretrain before finetune")
    return names


def plan_phases(config: Config, names: Sequence[str]) -> list[PhaseInfo]:
    """The run's phases with their step offsets; phases with 0 steps are kept (they train nothing)."""
    cfgs = [(n, getattr(config.train, n)) for n in names]
    total = sum(c.steps for _, c in cfgs)
    plan, offset = [], 0
    for name, cfg in cfgs:
        plan.append(PhaseInfo(name, PHASE_ORDER.index(name), cfg, offset, total))
        offset += cfg.steps
    if total == 0:
        raise ConfigError(f"train: every phase of {list(names)} has 0 steps; set train.<phase>.steps")
    return plan


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/inf: training stops rather than corrupt the weights."""


class SampleRenderer(Protocol):
    def render(self, ema_state: dict[str, torch.Tensor], path: Path, guidance_scale: float) -> Path:
        """Sample the EMA weights at ``guidance_scale``; save the grid PNG at ``path``."""
        ...


def grid_guidance_scale(config: Config, phase: PhaseInfo) -> float:
    """``sample.guidance_scale`` once the model has been trained with dropped labels, else 1.0.

    Before any label drop (the paper's pretrain) the unconditional branch is untrained, so
    guidance would only add noise to the picture of how training goes."""
    trained_null = any(getattr(config.train, name).drop_rate > 0 for name in PHASE_ORDER[:phase.index + 1])
    return config.sample.guidance_scale if trained_null else 1.0


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """train.precision around the loss: ``auto`` is bf16 autocast wherever the device runs bf16 natively
    (CUDA with bf16; a CPU with AVX512-BF16 or AMX: ``sdm.precision.bf16_native``), fp32 elsewhere,
    where bf16 would be emulated and slower. fp32 is no autocast at all (the exact path)."""
    return precision_autocast(precision, device)


@dataclass
class LoopParts:
    """Everything a phase trains with, built once per run by ``sdm.train.worker``."""

    config: Config
    ctx: WorkerContext
    model: nn.Module  # the raw model (EMA and checkpoints use its keys)
    net: nn.Module  # what the loss calls: the model, or its DistributedDataParallel wrapper
    ema: EMA
    diffusion: Any  # sdm.diffusion.GaussianDiffusion
    dataset: TrainingDataset
    sink: CheckpointSink
    hooks: Hook  # this rank's: every rank gets StepStart, rank 0 also the events the driver shows
    run_dir: Path
    data_version: str = ""
    sampler: SampleRenderer | None = None
    # The per-sample losses of a batch: objective(net, x_start, t, segmap, noise) -> {"loss", "mse", "vb": [N]}.
    # None = diffusion.training_losses (ordinary training); distillation passes sdm.distill's objective.
    objective: Callable[..., dict[str, torch.Tensor]] | None = None


class _Meter:
    """Sums of per-sample losses (overall and by timestep quartile) between two log lines."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps
        self.reset()

    def reset(self) -> None:
        # loss, mse, vb, count, then 4 quartile loss sums and 4 quartile counts
        self.sums = torch.zeros(12, dtype=torch.float64)
        self.steps = 0
        self.grad_norm = 0.0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], t: torch.Tensor, grad_norm: float) -> None:
        loss = losses["loss"].detach().double().cpu()
        self.sums[0] += loss.sum()
        self.sums[1] += losses["mse"].detach().double().cpu().sum()
        self.sums[2] += losses["vb"].detach().double().cpu().sum()
        self.sums[3] += loss.numel()
        quartile = (t.cpu() * 4 // self.num_timesteps).clamp(0, 3)
        for q in range(4):
            sel = quartile == q
            self.sums[4 + q] += loss[sel].sum()
            self.sums[8 + q] += sel.sum()
        self.steps += 1
        self.grad_norm += grad_norm

    def metrics(self, ctx: WorkerContext, global_batch: int, lr: float) -> dict[str, float]:
        sums = all_reduce_sum(self.sums.clone(), ctx)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        count = max(sums[3].item(), 1.0)
        out = {
            "loss": sums[0].item() / count,
            "mse": sums[1].item() / count,
            "vb": sums[2].item() / count,
            "lr": lr,
            "grad_norm": self.grad_norm / max(self.steps, 1),
            "img_per_s": self.steps * global_batch / elapsed,
            "s_per_step": elapsed / max(self.steps, 1),
        }
        for q in range(4):
            if sums[8 + q] > 0:
                out[f"loss_q{q}"] = sums[4 + q].item() / sums[8 + q].item()
        return out


def train_phase(parts: LoopParts, phase: PhaseInfo, optimizer_state: dict[str, Any] | None = None) -> None:
    """Run ``phase`` from ``phase.start_step`` to ``phase.steps`` (continuing ``optimizer_state`` when given)."""
    cfg, ctx = parts.config, parts.ctx
    tc = cfg.train
    phase_cfg: PhaseConfig = phase.cfg
    optimizer = make_optimizer(parts.model, phase_cfg, tc.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    order = DataOrder(len(parts.dataset), tc.batch_size, tc.seed, phase.name)
    positions = local_positions(tc.batch_size, ctx.rank, ctx.world_size)
    meter = _Meter(parts.diffusion.num_timesteps)
    image_shape = (cfg.model.in_channels, *cfg.model.image_size)
    params = [p for p in parts.model.parameters() if p.requires_grad]
    max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
    parts.net.train()
    if ctx.is_main:
        parts.hooks.handle(PhaseStart(phase))

    batches = step_batches(parts.dataset, order, phase.start_step, phase.steps, positions,
                           num_workers=cfg.data.loader_workers)
    lr = lr_at(phase.start_step, phase_cfg) if phase.start_step < phase.steps else 0.0
    for step, batch in zip(range(phase.start_step, phase.steps), batches, strict=True):
        parts.hooks.handle(StepStart(phase, step, ctx.rank))
        lr = lr_at(step, phase_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_torch_seed(tc.seed, phase.name, step, ctx.rank))

        x_start = batch["image"].to(ctx.device, non_blocking=True)
        label = batch["label"].to(ctx.device, non_blocking=True)
        instance = batch["instance"].to(ctx.device) if batch["instance"] is not None else None
        t, noise, drop = sample_randomness(seed=tc.seed, stream=phase.name, step=step, sample_indices=positions,
                                           num_timesteps=parts.diffusion.num_timesteps, shape=image_shape,
                                           drop_rate=phase_cfg.drop_rate)
        segmap = apply_drop(make_segmap(label, instance, cfg.model), drop.to(ctx.device))
        with autocast_context(tc.precision, ctx.device):
            if parts.objective is None:
                losses = parts.diffusion.training_losses(parts.net, x_start, t.to(ctx.device), segmap,
                                                         noise=noise.to(ctx.device))
            else:
                losses = parts.objective(parts.net, x_start, t.to(ctx.device), segmap, noise.to(ctx.device))
        loss = losses["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"{phase.name} step {step + 1}: gradient norm is {grad_norm} "
                                     f"(loss {loss.item():.4g}); lower the learning rate or check the data")
        optimizer.step()
        parts.ema.update(parts.model)
        meter.add(losses, t, grad_norm)

        done = step + 1
        last = done == phase.steps
        if done % tc.log_every == 0 or last:
            log = StepLog(phase=phase, step=done, metrics=meter.metrics(ctx, tc.batch_size, lr))
            if ctx.is_main:
                parts.hooks.handle(log)
            meter.reset()
        if done % tc.checkpoint_every == 0 or last:
            _save(parts, phase, done, optimizer)
        if parts.sampler is not None and ctx.is_main and (done % tc.sample_every == 0 or last):
            scale = grid_guidance_scale(cfg, phase)
            path = parts.sampler.render(parts.ema.state_dict(), parts.run_dir / "samples" /
                                        f"{phase.name}-{done:07d}-s{scale:g}.png", scale)
            parts.hooks.handle(SampleSaved(phase, done, path))
        if last or done % tc.checkpoint_every == 0 or done % tc.sample_every == 0:
            meter.started = time.perf_counter()  # img/s measures training, not checkpoints or grids


def _save(parts: LoopParts, phase: PhaseInfo, done: int, optimizer: torch.optim.Optimizer) -> None:
    def make_state() -> TrainState:
        return TrainState(
            phase=phase.name, phase_index=phase.index, step=done, phase_steps=phase.steps,
            model=parts.model.state_dict(), ema=parts.ema.state_dict(), ema_updates=parts.ema.num_updates,
            optimizer=optimizer.state_dict(), config=to_dict(parts.config), data_version=parts.data_version,
            extra={"global_step": phase.global_offset + done, "world_size": parts.ctx.world_size},
        )

    where = parts.sink.save(make_state, f"checkpoint-{phase.name}-{done:07d}",
                            {"phase_index": phase.index, "step": done, "global_step": phase.global_offset + done})
    if parts.ctx.is_main:
        parts.hooks.handle(CheckpointSaved(phase, done, where))
