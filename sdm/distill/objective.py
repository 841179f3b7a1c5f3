"""The two training objectives of guided distillation, run by the ordinary training loop (``LoopParts.objective``).

``make_objective(config, device)`` returns None for ordinary training (``distill.stage`` empty), else an
``Objective``: ``objective(net, x_start, t, segmap, noise) -> {"loss", "mse", "vb"}`` (each [N] float), the
same contract as ``GaussianDiffusion.training_losses``. It holds the frozen teacher (the EMA weights of
``distill.teacher``) and calls ``net(x_t, t, segmap, guidance_scale=w)``, the student (or its DDP wrapper).

- ``guidance`` (stage one, Meng et al. 2023): target = the teacher's classifier-free guided output at w (eps
  channels guided, variance channels from the conditional branch); loss = MSE over all output channels, so the
  student's variance channels stay usable by the other samplers.
- ``halve`` (stage two, progressive distillation): the student does in one DDIM step (eta 0) on grid(n) what
  the teacher does in two on grid(2n); loss = max(SNR_t, 1) ||x_hat - x_tilde||^2 (``targets``), plus the MSE
  of the variance channels against the teacher's at t (free: the teacher's first pass is at t) to keep them
  usable by the other samplers.

w is drawn uniformly from ``distill.guidance_range`` per sample with torch's global RNG (on the CPU, so it is
the same on any device): the loop seeds it per (seed, phase, step, rank) before every step, which makes a
resumed run exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdm.conditioning import null_segmap_like
from sdm.config.schema import Config
from sdm.diffusion.gaussian import GaussianDiffusion
from sdm.diffusion.losses import mean_flat
from sdm.distill import targets
from sdm.errors import InputError

EPS_CHANNELS = 3


class DistillSetupError(InputError):
    """A distillation stage whose settings or teacher cannot work; the message names the setting."""


def draw_guidance_scales(n: int, guidance_range: list[float] | tuple[float, float], device: torch.device) -> Tensor:
    """w [n] float32 uniform in [w_min, w_max], drawn on the CPU from torch's global RNG, moved to ``device``."""
    lo, hi = float(guidance_range[0]), float(guidance_range[1])
    return (lo + (hi - lo) * torch.rand(n)).to(device)


class Objective:
    """A distillation loss against a frozen teacher; see the module docstring. ``stage``: guidance | halve."""

    def __init__(self, stage: str, teacher: Any, diffusion: GaussianDiffusion, guidance_range: list[float],
                 teacher_steps: int = 0) -> None:
        if stage not in ("guidance", "halve"):
            raise DistillSetupError(f"distill.stage={stage!r}: expected guidance or halve")
        self.stage = stage
        self.teacher = teacher
        self.diffusion = diffusion
        self.guidance_range = [float(w) for w in guidance_range]
        self.num_timesteps = diffusion.num_timesteps
        if stage == "halve":
            if teacher_steps < 2 or teacher_steps % 2 or teacher_steps > self.num_timesteps:
                raise DistillSetupError(f"distill.teacher_steps={teacher_steps}: a halving round needs an even "
                                        f"teacher grid of 2..{self.num_timesteps} (diffusion.steps) steps")
            if not getattr(teacher, "guidance_embedded", False):
                raise DistillSetupError("distill.stage=halve: the teacher (distill.teacher) has no guidance "
                                        "embedding; halving starts from the stage-one (guidance) student")
        self.teacher_steps = teacher_steps

    def teacher_output(self, x_t: Tensor, t: Tensor, segmap: Tensor, w: Tensor) -> Tensor:
        """The teacher's guided output [N, 6|3, H, W] at x_t [N, 3, H, W], original timesteps t [N], scales w [N].

        A guidance-embedded teacher (a previous stage's student) takes w in one pass; a plain one runs its
        conditional and null branches in one forward ([cond; null] label maps: its encoder runs once).
        """
        with torch.no_grad():
            if getattr(self.teacher, "guidance_embedded", False):
                return self.teacher(x_t, t, segmap, guidance_scale=w).float()
            both = self.teacher(x_t, t, torch.cat([segmap, null_segmap_like(segmap)])).float()
            out_cond, out_uncond = both.chunk(2)
            return targets.guided_target(out_cond, out_uncond, w, EPS_CHANNELS)

    def __call__(self, net: Any, x_start: Tensor, t: Tensor, segmap: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """x_start [N, 3, H, W] in [-1, 1], t [N] long (the loop's uniform draw in 0..T-1), segmap [N, C, H, W],
        noise [N, 3, H, W] -> {"loss", "mse", "vb"}: [N] float32 each (vb is zeros)."""
        w = draw_guidance_scales(x_start.shape[0], self.guidance_range, x_start.device)
        if self.stage == "guidance":
            return self._guidance(net, x_start, t, segmap, noise, w)
        return self._halve(net, x_start, t, segmap, noise, w)

    def _guidance(self, net: Any, x_start: Tensor, t: Tensor, segmap: Tensor, noise: Tensor,
                  w: Tensor) -> dict[str, Tensor]:
        x_t = self.diffusion.q_sample(x_start, t, noise)
        model_t = self.diffusion.model_timesteps(t)
        target = self.teacher_output(x_t, model_t, segmap, w)
        out = net(x_t, model_t, segmap, guidance_scale=w).float()
        mse = mean_flat((out - target) ** 2)
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    def _halve(self, net: Any, x_start: Tensor, t: Tensor, segmap: Tensor, noise: Tensor,
               w: Tensor) -> dict[str, Tensor]:
        n = self.teacher_steps // 2
        t_student, t_mid, t_end = targets.halving_timesteps(t, n, self.num_timesteps)
        table = self.diffusion.alphas_cumprod
        abar_t, abar_mid, abar_end = (targets.abar_at(table, s) for s in (t_student, t_mid, t_end))
        # The full training process: index == original timestep.
        x_t = self.diffusion.q_sample(x_start, t_student, noise).float()
        with torch.no_grad():
            out_t = self.teacher_output(x_t, t_student, segmap, w)
            z_mid = targets.ddim_step(x_t, out_t[:, :EPS_CHANNELS], abar_t, abar_mid)
            out_mid = self.teacher_output(z_mid, t_mid, segmap, w)
            z_end = targets.ddim_step(z_mid, out_mid[:, :EPS_CHANNELS], abar_mid, abar_end)
            x_tilde = targets.two_step_target(x_t, z_end, abar_t, abar_end)
        out = net(x_t, t_student, segmap, guidance_scale=w).float()
        x_hat = targets.predict_x(x_t, out[:, :EPS_CHANNELS], abar_t)
        mse = mean_flat((x_hat - x_tilde) ** 2)
        loss = targets.truncated_snr_weight(abar_t).float() * mse
        if out.shape[1] > EPS_CHANNELS:
            loss = loss + mean_flat((out[:, EPS_CHANNELS:] - out_t[:, EPS_CHANNELS:]) ** 2)
        return {"loss": loss, "mse": mse, "vb": torch.zeros_like(mse)}


def load_teacher(directory: str | Path, device: torch.device) -> tuple[Any, Config]:
    """The frozen teacher and its config: the EMA weights of the checkpoint ``directory``, eval mode, no
    gradients, on ``device``."""
    from sdm.model import load_checkpoint

    if not str(directory):
        raise DistillSetupError("distill.teacher is empty: a distillation stage needs its teacher's checkpoint "
                                "directory (set by `sdm distill`)")
    teacher, teacher_config = load_checkpoint(directory, use_ema=True, device=device)
    teacher.requires_grad_(False)
    return teacher.eval(), teacher_config


def make_objective(config: Config, device: torch.device) -> Objective | None:
    """The stage's objective (None when ``distill.stage`` is empty: ordinary training's hybrid loss)."""
    d = config.distill
    if not d.stage:
        return None
    if not config.model.guidance_embed:
        raise DistillSetupError(f"distill.stage={d.stage}: the student's config has model.guidance_embed false; "
                                "a distillation student embeds the guidance scale (sdm.distill.student_config)")
    lo, hi = (float(w) for w in d.guidance_range)
    if not 0 <= lo <= hi:
        raise DistillSetupError(f"distill.guidance_range={list(d.guidance_range)}: expected [w_min, w_max] with "
                                "0 <= w_min <= w_max")
    teacher, teacher_config = load_teacher(d.teacher, device)
    # The student learns the teacher's function: same process, same network apart from the embedding.
    if teacher_config.diffusion != config.diffusion:
        raise DistillSetupError(f"distill.teacher={d.teacher}: its diffusion section {teacher_config.diffusion} "
                                f"differs from the student's {config.diffusion}")
    for key in ("image_size", "num_classes", "use_instance", "in_channels", "learn_sigma"):
        if getattr(teacher_config.model, key) != getattr(config.model, key):
            raise DistillSetupError(f"distill.teacher={d.teacher}: its model.{key}="
                                    f"{getattr(teacher_config.model, key)} differs from the student's "
                                    f"{getattr(config.model, key)}; build the student with sdm.distill.student_config")
    diffusion = GaussianDiffusion(config.diffusion, config.model.learn_sigma)
    return Objective(d.stage, teacher, diffusion, [lo, hi], d.teacher_steps)
