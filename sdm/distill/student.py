"""The distilled student: its config and its initial checkpoint (stage one's ``init_from``).

The student is an ordinary sdm checkpoint: the teacher's U-Net plus a guidance embedding
(``model.guidance_embed``), whose config names its own sampler (``renoise`` on its grid, K steps) and the
guidance range it was distilled for, so ``sdm sample``, evaluation and the served model use it with no extra
flags; ``distilled`` (DDIM with eta on the same grid) is served too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sdm.config.schema import SAMPLER_NAMES, Config, DistillConfig
from sdm.errors import InputError

DISTILLED = "distilled"
# The student's own sampler: x_0 re-noised each step, on its grid. On the demo's 8-step student it beat DDIM
# with eta 1 (mIoU 0.385 -> 0.447, FSD 0.293 -> 0.184, 120 samples) at the same passes per image
# (benchmarks/RESULTS.md, "Re-noising few-step sampling").
STUDENT_SAMPLER = "renoise"
# The student's default DDIM eta: fresh noise each step corrects its errors along the way, as dpmpp-sde's does
# for the teacher; at the same passes per image it lifted mIoU 0.283 -> 0.366 (8 steps) and 0.233 -> 0.315
# (4 steps), FSD by ~45% (benchmarks/RESULTS.md, "Stochastic few-step sampling"). 0 = deterministic DDIM.
STUDENT_ETA = 1.0


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(float(value), lo), hi)


def student_config(teacher: Config, distill: DistillConfig) -> Config:
    """The student's config: the teacher's, with the guidance embedding and its own sampling settings.

    model.guidance_embed true; sample and evaluate: sampler ``renoise`` (STUDENT_SAMPLER), ``distill.steps`` (K)
    steps, eta STUDENT_ETA (for ``distilled``), guidance scales inside ``distill.guidance_range`` (the teacher's,
    clamped into it; evaluate keeps those inside, else the sample scale), the steps sweep led by ``renoise:K``
    then ``distilled:K``; register: the student's model name (``distill.model_name`` or
    ``<teacher's>-distilled``), serving samplers + ``distilled`` and ``renoise`` and the serving
    guidance range narrowed to the distilled one; the distill section as given. InputError (naming the keys)
    for a teacher that is itself a student or a grid the diffusion cannot hold.
    """
    if teacher.model.guidance_embed:
        raise InputError("the teacher has model.guidance_embed true: it is already a distilled student; distil "
                         "from the guided model it came from")
    lo, hi = (float(w) for w in distill.guidance_range)
    if not 0 <= lo <= hi:
        raise InputError(f"distill.guidance_range={list(distill.guidance_range)}: expected [w_min, w_max] with "
                         "0 <= w_min <= w_max")
    steps_t = teacher.diffusion.steps
    if distill.start_steps > steps_t or distill.steps > steps_t:
        raise InputError(f"distill.start_steps={distill.start_steps} / distill.steps={distill.steps}: the "
                         f"teacher's diffusion has {steps_t} steps (diffusion.steps); the grids cannot be finer")
    k = distill.steps
    own = [f"{STUDENT_SAMPLER}:{k}", f"{DISTILLED}:{k}"]
    scale = _clamp(teacher.sample.guidance_scale, lo, hi)
    scales = [s for s in teacher.evaluate.guidance_scales if lo <= s <= hi] or [scale]
    sweep = [*own, *(p for p in teacher.evaluate.steps_sweep if p.strip() not in own)]
    serving = teacher.register.serving
    s_lo, s_hi = max(lo, serving.min_guidance_scale), min(hi, serving.max_guidance_scale)
    if s_lo > s_hi:  # the teacher's serving range misses the distilled one: serve the distilled one
        s_lo, s_hi = lo, hi
    samplers = [s for s in SAMPLER_NAMES if s in serving.samplers or s in (DISTILLED, STUDENT_SAMPLER)]
    name = distill.model_name or f"{teacher.register.model_name}-distilled"
    return replace(
        teacher,
        model=replace(teacher.model, guidance_embed=True),
        sample=replace(teacher.sample, sampler=STUDENT_SAMPLER, steps=k, guidance_scale=scale, eta=STUDENT_ETA),
        evaluate=replace(teacher.evaluate, sampler=STUDENT_SAMPLER, steps=k, eta=STUDENT_ETA, guidance_scales=scales,
                         steps_sweep=sweep),
        register=replace(teacher.register, model_name=name, serving=replace(
            serving, samplers=samplers, min_guidance_scale=s_lo, max_guidance_scale=s_hi,
            max_steps=max(serving.max_steps, k))),
        distill=replace(distill, guidance_range=[lo, hi]),
    )


def student_sampling(sample: Any, checkpoint_config: Config, given: set[str] | frozenset[str]) -> Any:
    """``sample`` (a SampleConfig or EvaluateConfig) with a student's own ``sampler``, ``steps`` and ``eta`` as
    defaults.

    For a checkpoint whose config is a student's (model.guidance_embed) the keys not in ``given`` (what the
    user set explicitly: ``{"sampler", "steps", "eta"}`` or part of it) come from the checkpoint's same section
    (``eta`` only with the checkpoint's sampler); any other checkpoint gets ``sample`` unchanged.
    """
    if not checkpoint_config.model.guidance_embed:
        return sample
    own = checkpoint_config.evaluate if hasattr(sample, "steps_sweep") else checkpoint_config.sample
    # eta goes with the student's own sampler: a sampler the user named keeps the run's eta.
    keys = ("sampler", "steps") if "sampler" in given else ("sampler", "steps", "eta")
    changes = {key: getattr(own, key) for key in keys if key not in given}
    return replace(sample, **changes)


def init_student_checkpoint(teacher_dir: Path, out_dir: Path, config: Config, meta: dict[str, Any]) -> Path:
    """Write the student's initial checkpoint to ``out_dir`` (atomically) and return it.

    Weights: the teacher's EMA weights (its model weights when it has no EMA) as both model and EMA, plus the
    guidance embedding (``guidance_embed.*``) initialised with ``train.seed``: its last Linear is zero, so the
    student's output equals the teacher's conditional output at any guidance scale. ``config``: the student's
    (``student_config``); its model section must be the teacher's plus guidance_embed (InputError otherwise).
    """
    from sdm.model import SDMUNet, load_checkpoint, save_checkpoint

    teacher, teacher_config = load_checkpoint(teacher_dir, use_ema=True)
    if not config.model.guidance_embed or replace(teacher_config.model, guidance_embed=True) != config.model:
        raise InputError(f"{Path(teacher_dir) / 'config.json'}: the student's model section must be the teacher's "
                         "with model.guidance_embed true (build it with sdm.distill.student_config)")
    state = dict(teacher.state_dict())
    # The embedding's first layer is random: seeded, so the same teacher and config give the same student.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        fresh = SDMUNet(config.model)
    state.update({k: v for k, v in fresh.state_dict().items() if k.startswith("guidance_embed.")})
    return save_checkpoint(out_dir, state, config, ema_state=state, meta=meta)
