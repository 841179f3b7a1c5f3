"""The Gaussian diffusion process: q(x_t | x_0), its posterior, the model's p(x_{t-1} | x_t), the hybrid loss.

The process never owns the network: training takes the model as an argument,
and ``p_mean_variance`` takes the model's *output*, so that guidance can
combine two outputs before the process interprets them.

Indices ``t`` below are positions in this process (0 .. num_timesteps - 1).
For the full process they are the original timesteps; for a respaced one
(``respace``: a K-step process on a subset of the original T timesteps)
``timestep_map[t]`` is the original timestep the network is fed, as the
official code does, so a model trained on T = 1000 sees t in 0..999 and
samples correctly whatever the step count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdm.config.schema import DiffusionConfig
from sdm.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from sdm.diffusion.schedule import named_beta_schedule
from sdm.errors import InputError


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` original timesteps, evenly spaced over [0, T - 1] and rounded; ascending.

    Both ends are always kept (0 and T - 1), as in the official respacing with
    one section. One step keeps T - 1 (a single denoising from pure noise).
    """
    if not 1 <= steps <= num_timesteps:
        raise InputError(f"cannot respace {num_timesteps} diffusion steps to {steps}; expected 1..{num_timesteps}")
    if steps == 1:
        return [num_timesteps - 1]
    # Accumulating the float stride (rather than i * stride) reproduces the
    # official code's rounding at ties, so both pick the same timesteps.
    stride = (num_timesteps - 1) / (steps - 1)
    kept, position = set(), 0.0
    for _ in range(steps):
        kept.add(round(position))
        position += stride
    return sorted(kept)


def _extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as [N, 1, 1, ...] on like's device, in like's float dtype."""
    out = values[t.to(values.device).long()]
    return out.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


class GaussianDiffusion:
    """A discrete diffusion process with T steps, epsilon prediction and (optionally) learned-range variance.

    ``GaussianDiffusion(config, learn_sigma)`` builds the training process from
    ``config.steps`` and ``config.noise_schedule``; ``respace(k)`` gives a k-step
    process for sampling. All schedule tables are float64 and cast per use.
    """

    def __init__(self, config: DiffusionConfig, learn_sigma: bool) -> None:
        betas = named_beta_schedule(config.noise_schedule, config.steps)
        self._setup(betas, learn_sigma, config.lambda_vlb, np.arange(config.steps), config.steps)

    @classmethod
    def from_betas(
        cls,
        betas: np.ndarray,
        learn_sigma: bool,
        lambda_vlb: float = 0.001,
        timestep_map: np.ndarray | None = None,
        original_num_timesteps: int | None = None,
    ) -> GaussianDiffusion:
        """A process from explicit betas [K] (float64 in (0, 1]); ``timestep_map`` [K] gives the model's timesteps."""
        self = cls.__new__(cls)
        k = len(betas)
        self._setup(
            np.asarray(betas, dtype=np.float64),
            learn_sigma,
            lambda_vlb,
            np.arange(k) if timestep_map is None else np.asarray(timestep_map),
            k if original_num_timesteps is None else original_num_timesteps,
        )
        return self

    def _setup(
        self, betas: np.ndarray, learn_sigma: bool, lambda_vlb: float, timestep_map: np.ndarray, original: int
    ) -> None:
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array of values in (0, 1]")
        if timestep_map.shape != betas.shape:
            raise ValueError(f"timestep_map has {len(timestep_map)} entries for {len(betas)} betas")
        self.learn_sigma = learn_sigma
        self.lambda_vlb = float(lambda_vlb)
        self.num_timesteps = len(betas)
        self.original_num_timesteps = int(original)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long)

        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        def f64(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a, dtype=torch.float64)

        self.betas = f64(betas)
        self.alphas_cumprod = f64(alphas_cumprod)
        self.alphas_cumprod_prev = f64(alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = f64(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = f64(np.sqrt(1.0 - alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = f64(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = f64(np.sqrt(1.0 / alphas_cumprod - 1.0))
        self.posterior_variance = f64(posterior_variance)
        # The posterior variance is 0 at t = 0; its log is clipped to the t = 1 value.
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas
        self.posterior_log_variance_clipped = f64(np.log(clipped))
        self.posterior_mean_coef1 = f64(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = f64((1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod))
        # Without learned variance: the "fixed large" variance (beta_t, with the
        # posterior's at t = 0 for a better decoder likelihood).
        fixed_large = np.append(clipped[0], betas[1:]) if len(betas) > 1 else betas
        self.fixed_log_variance = f64(np.log(fixed_large))
        self.log_betas = f64(np.log(betas))

    # -- the forward process ------------------------------------------------

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The original timesteps [N] (long, in 0..T-1) the network is fed for process indices t [N]."""
        return self.timestep_map.to(t.device)[t.long()]

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I); x_start [N, C, H, W] in [-1, 1], t [N] long."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0), each [N, C, H, W] ([N,1,1,1] for var)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x_start + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_variance, t, x_t), _extract(self.posterior_log_variance_clipped, t, x_t)

    def predict_x_start_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); all [N, C, H, W]."""
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x_start(self, x_t: Tensor, t: Tensor, x_start: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t); all [N, C, H, W]."""
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / _extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    # -- the model's reverse step -------------------------------------------

    def split_output(self, model_output: Tensor) -> tuple[Tensor, Tensor | None]:
        """[N, 6|3, H, W] -> (eps [N, 3, H, W], variance values [N, 3, H, W] in about [-1, 1] or None)."""
        if self.learn_sigma:
            if model_output.shape[1] % 2:
                raise ValueError(f"learn_sigma expects an even number of output channels, got {model_output.shape[1]}")
            eps, var_values = model_output.chunk(2, dim=1)
            return eps, var_values
        return model_output, None

    def model_log_variance(self, var_values: Tensor | None, t: Tensor, like: Tensor) -> Tensor:
        """log variance of p(x_{t-1} | x_t): learned range v in [-1, 1] -> between log posterior var and log beta."""
        if var_values is None:
            return _extract(self.fixed_log_variance, t, like).expand_as(like)
        min_log = _extract(self.posterior_log_variance_clipped, t, like)
        max_log = _extract(self.log_betas, t, like)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True) -> dict:
        """p(x_{t-1} | x_t) from the model's output [N, 6|3, H, W] at x_t [N, 3, H, W] and process indices t [N].

        Returns ``mean``, ``variance``, ``log_variance`` (each [N, 3, H, W]),
        ``pred_x_start`` (clamped to [-1, 1] when clip_denoised) and ``eps``.
        """
        eps, var_values = self.split_output(model_output)
        log_variance = self.model_log_variance(var_values, t, x_t)
        pred_x_start = self.predict_x_start_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x_start = pred_x_start.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_x_start, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_x_start": pred_x_start,
            "eps": eps,
        }

    # -- training -----------------------------------------------------------

    def vb_terms_bpd(self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """One term of the variational bound per sample [N], in bits per dim.

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the decoder NLL
        -log p(x_0 | x_1) at t = 0.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)

    def training_losses(
        self, model: Any, x_start: Tensor, t: Tensor, segmap: Tensor, noise: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The hybrid loss L_simple + lambda_vlb * T * L_vlb-term, each [N] (float32).

        ``model(x_t, t, segmap)`` is called once with the original timesteps.
        x_start [N, 3, H, W] in [-1, 1]; t [N] long process indices; segmap [N, C, H, W].
        The VLB term sees the epsilon prediction through a stop-gradient, so it
        only trains the variance (Improved DDPM); without learn_sigma vb is 0.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, self.model_timesteps(t), segmap).float()
        eps, var_values = self.split_output(model_output)
        mse = mean_flat((noise.float() - eps) ** 2)
        if var_values is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start.float(), x_t.float(), t)
        # vb estimates one of T terms of L_vlb; T * vb estimates the whole bound.
        loss = mse + self.lambda_vlb * self.num_timesteps * vb
        return {"loss": loss, "mse": mse, "vb": vb}

    # -- respacing ------------------------------------------------------------

    def respace(self, steps: int) -> GaussianDiffusion:
        """The process restricted to ``space_timesteps(num_timesteps, steps)``; keeps learn_sigma and lambda_vlb.

        It keeps alpha_bar at the kept timesteps, so its betas are
        1 - abar[t_i] / abar[t_{i-1}]. Respacing an already respaced process
        composes the timestep maps.
        """
        return self.respace_to(space_timesteps(self.num_timesteps, steps))

    def respace_to(self, keep: list[int]) -> GaussianDiffusion:
        """The process restricted to the process indices ``keep`` (ascending, distinct, in 0..num_timesteps-1).

        As ``respace`` with an explicit list: the distilled sampler's grid (``sdm.distill.targets.grid``).
        The first kept index steps to x_0 (alphas_cumprod_prev = 1) wherever it sits.
        """
        keep = [int(k) for k in keep]
        if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise InputError(f"cannot respace to timesteps {keep}: expected distinct ascending values in "
                             f"0..{self.num_timesteps - 1}")
        alphas_cumprod = self.alphas_cumprod.numpy()[keep]
        prev = np.append(1.0, alphas_cumprod[:-1])
        betas = 1.0 - alphas_cumprod / prev
        timestep_map = self.timestep_map.numpy()[keep]
        return GaussianDiffusion.from_betas(betas, self.learn_sigma, self.lambda_vlb, timestep_map,
                                            self.original_num_timesteps)
