"""The paper's two phases, pretrain then finetune, as a plan for one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdm.config import Config, ConfigError, PhaseConfig

PHASE_ORDER = ("pretrain", "finetune")


@dataclass(frozen=True)
class PlannedPhase:
    name: str
    index: int  # position in PHASE_ORDER (orders checkpoints across phases)
    cfg: PhaseConfig
    global_offset: int  # steps of the run's earlier phases
    total_steps: int  # steps of all the run's phases


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


def plan_phases(config: Config, names: Sequence[str]) -> list[PlannedPhase]:
    """The run's phases with their step offsets; phases with 0 steps are kept (they train nothing)."""
    cfgs = [(n, getattr(config.train, n)) for n in names]
    total = sum(c.steps for _, c in cfgs)
    plan, offset = [], 0
    for name, cfg in cfgs:
        plan.append(PlannedPhase(name, PHASE_ORDER.index(name), cfg, offset, total))
        offset += cfg.steps
    if total == 0:
        raise ConfigError(f"train: every phase of {list(names)} has 0 steps; set train.<phase>.steps")
    return plan
