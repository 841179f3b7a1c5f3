"""The samplers, their registry and ``sample_loop``: guided sampling of a batch of label maps, seeded.

Each sampler walks a respaced process from x_T to x_0 through descending
process indices and takes the (guided) denoiser as an argument,
``denoise(x_t [N, 3, H, W], t [N] original timesteps) -> model output [N, 6|3, H, W]``.
Each takes only the knobs it uses: ``eta`` only DDIM (and ``distilled``), ``draw_noise`` (a
callable giving fresh standard normal noise shaped like x) only those that
inject noise. ``sample_loop`` passes a sampler just the knobs it accepts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from sdm.diffusion.gaussian import GaussianDiffusion
from sdm.diffusion.guidance import GuidedDenoiser
from sdm.distill.targets import grid
from sdm.errors import InputError

Denoiser = Callable[[Tensor, Tensor], Tensor]
NoiseDraw = Callable[[], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def _denoise_at(denoise: Denoiser, process: GaussianDiffusion, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """The process index i as t [N] (long, on x's device) and the denoiser's output at x for it.

    The network is fed the original timestep ``timestep_map[i]``, never i itself.
    """
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    return t, denoise(x, process.model_timesteps(t))


def _require_noise(draw_noise: NoiseDraw | None, why: str) -> NoiseDraw:
    if draw_noise is None:
        raise ValueError(f"{why} injects noise: pass draw_noise")
    return draw_noise


def ddpm_sample(
    denoise: Denoiser,
    process: GaussianDiffusion,
    x: Tensor,
    *,
    indices: Iterable[int],
    draw_noise: NoiseDraw,
    clip_denoised: bool = True,
) -> Tensor:
    """Ancestral DDPM: x_{t-1} ~ p(x_{t-1} | x_t) with the learned (or fixed) variance.

    x: x_T [N, 3, H, W]; indices: the process indices, descending. Returns x_0
    [N, 3, H, W] (x's dtype); no noise is added on the last step.
    """
    for i in indices:
        t, model_output = _denoise_at(denoise, process, x, i)
        out = process.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
        x = out["mean"]
        if i > 0:
            x = x + torch.exp(0.5 * out["log_variance"]) * draw_noise()
    return x


def ddim_sample(
    denoise: Denoiser,
    process: GaussianDiffusion,
    x: Tensor,
    *,
    indices: Iterable[int],
    eta: float = 0.0,
    draw_noise: NoiseDraw | None = None,
    clip_denoised: bool = True,
) -> Tensor:
    """DDIM (Song et al., eq. 12); eta in [0, 1] scales the injected noise (0: deterministic, 1 ~ DDPM's variance).

    x: x_T [N, 3, H, W]; indices: the process indices, descending. Returns x_0
    [N, 3, H, W] (x's dtype). ``draw_noise`` is needed only when eta > 0.
    """
    if eta > 0:
        draw_noise = _require_noise(draw_noise, f"DDIM with eta {eta}")
    for i in indices:
        t, model_output = _denoise_at(denoise, process, x, i)
        x_start = process.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)["pred_x_start"]
        # eps re-derived from the (clipped) x_0 keeps the update consistent with it.
        eps = process.predict_eps_from_x_start(x, t, x_start)
        abar = float(process.alphas_cumprod[i])
        abar_prev = float(process.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        x = x_start * math.sqrt(abar_prev) + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if i > 0 and sigma > 0:
            x = x + sigma * draw_noise()
    return x


def dpmpp_2m_sample(
    denoise: Denoiser,
    process: GaussianDiffusion,
    x: Tensor,
    *,
    indices: Iterable[int],
    sde: bool = False,
    draw_noise: NoiseDraw | None = None,
    clip_denoised: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction, on the discrete schedule.

    x: x_T [N, 3, H, W]; indices: the process indices, descending. Returns x_0
    [N, 3, H, W] (x's dtype). With lambda = log(alpha / sigma) (alpha = sqrt(abar),
    sigma = sqrt(1 - abar)), h = lambda_next - lambda_cur and D the (clipped) x_0
    prediction, the two forms:

    - ODE (``sde=False``, deterministic):
          x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D'
    - SDE (``sde=True``, SDE-DPM-Solver++(2M), fresh noise z = draw_noise() each step):
          x_next = (sigma_next / sigma_cur) exp(-h) x + alpha_next (1 - exp(-2h)) D'
                   + sigma_next sqrt(1 - exp(-2h)) z

    where D' = D on the first step (first order: DDIM with eta = 0 resp. 1) and,
    afterwards, D' = D + (D - D_prev) / (2r) with r = h_prev / h. The step into the
    last timestep (original t = 0) is first order too: on a grid uniform in t the
    lambda step there is long (r small), where the 2M extrapolation overshoots
    (the "lower order final" of DPM-Solver's reference code). The model's x_0
    prediction at t = 0 is the result, as in DDIM's last step.

    Why both: the SDE's injected noise corrects the model's errors along the way,
    as ancestral DDPM does, so an imperfect (e.g. briefly trained) model keeps
    DDPM-1000's semantic consistency at 25 steps, where the ODE loses some
    (benchmarks/RESULTS.md, steps sweep); the ODE's images depend on x_T alone.
    """
    if sde:
        draw_noise = _require_noise(draw_noise, "the SDE form of DPM-Solver++(2M)")
    abar = process.alphas_cumprod.tolist()
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1 - a) for a in abar]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    d_prev: Tensor | None = None
    h_prev = 0.0
    for i in indices:
        _, model_output = _denoise_at(denoise, process, x, i)
        eps, _ = process.split_output(model_output)
        d = (x - sigma[i] * eps) / alpha[i]
        if clip_denoised:
            d = d.clamp(-1, 1)
        if i == 0:
            return d
        j = i - 1
        h = lam[j] - lam[i]
        d_hat = d if d_prev is None or j == 0 else d + (d - d_prev) / (2 * (h_prev / h))
        if sde:
            keep = -math.expm1(-2 * h)  # 1 - exp(-2h), accurate for the short steps of a fine grid
            x = (sigma[j] / sigma[i]) * math.exp(-h) * x + alpha[j] * keep * d_hat
            x = x + sigma[j] * math.sqrt(keep) * draw_noise()
        else:
            x = (sigma[j] / sigma[i]) * x - alpha[j] * math.expm1(-h) * d_hat
        d_prev, h_prev = d, h
    return x


def distilled_sample(
    denoise: Denoiser,
    process: GaussianDiffusion,
    x: Tensor,
    *,
    indices: Iterable[int],
    eta: float = 0.0,
    draw_noise: NoiseDraw | None = None,
    clip_denoised: bool = True,
) -> Tensor:
    """A guidance-distilled student's sampler: DDIM with ``eta`` (0: deterministic), one denoiser call per step.

    ``process``: the training process respaced to the student's grid (``sdm.distill.targets.grid``;
    ``sample_loop`` does it for ``sampler="distilled"``), whose first index steps to x_0. x: x_T
    [N, 3, H, W]; indices: the process indices, descending. Returns x_0 [N, 3, H, W] (x's dtype).
    eta in [0, 1] as in ``ddim_sample`` (fresh noise from ``draw_noise`` each step when > 0): the noise
    corrects the student's errors along the way, as dpmpp-sde does for the teacher (benchmarks/RESULTS.md,
    "Stochastic few-step sampling": mIoU 0.283 -> 0.366 at 8 steps with eta 1 on the demo's student).
    """
    return ddim_sample(denoise, process, x, indices=indices, eta=eta, draw_noise=draw_noise,
                       clip_denoised=clip_denoised)


def renoise_sample(
    denoise: Denoiser,
    process: GaussianDiffusion,
    x: Tensor,
    *,
    indices: Iterable[int],
    draw_noise: NoiseDraw,
    clip_denoised: bool = True,
) -> Tensor:
    """Re-noising multistep sampling (Song et al. 2023, "Consistency Models", Algorithm 1): at each step the
    (clipped) x_0 prediction is noised afresh to the next level, x_prev = sqrt(abar_prev) x_0 + sqrt(1 -
    abar_prev) z, keeping none of x_t's noise; the last step returns x_0.

    It is DDIM with the largest noise the update allows (sigma^2 = 1 - abar_prev, no eps direction): each step
    trusts only the x_0 prediction, so at a few steps the layout it commits to is not blurred by a coarse ODE
    step (benchmarks/RESULTS.md, "Re-noising few-step sampling"). For a distilled student it runs on the
    student's grid (``sample_loop``), one pass per step. x: x_T [N, 3, H, W]; indices: the process indices,
    descending. Returns x_0 [N, 3, H, W] (x's dtype).
    """
    for i in indices:
        t, model_output = _denoise_at(denoise, process, x, i)
        x_start = process.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)["pred_x_start"]
        if i == 0:
            return x_start
        abar_prev = float(process.alphas_cumprod_prev[i])
        x = math.sqrt(abar_prev) * x_start + math.sqrt(1 - abar_prev) * draw_noise()
    return x


# The names are sdm.config.schema.SAMPLER_NAMES (a test keeps the two equal).
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp": dpmpp_2m_sample,
    "dpmpp-sde": partial(dpmpp_2m_sample, sde=True),
    "distilled": distilled_sample,
    "renoise": renoise_sample,
}
# The samplers that run a distilled student on its own grid(K) (the timesteps it was distilled at); other
# samplers run it on the evenly respaced process, as any model.
ON_STUDENT_GRID = ("distilled", "renoise")


def draw_normal(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Standard normal noise of ``shape`` [N, ...] float32 on ``device``.

    With a sequence of N generators each row comes from its own generator, so a
    sample's noise does not depend on which batch it is in. Noise is drawn on
    the generator's device (CPU by default) and moved, so results match across devices.
    """
    if generator is None:
        return torch.randn(shape, device=device)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator]
    return torch.stack(rows)


def _progress(indices: list[int], enabled: bool, desc: str) -> Iterator[int]:
    if not enabled:
        return iter(indices)
    from tqdm.auto import tqdm

    return iter(tqdm(indices, desc=desc, unit="step"))


def sample_loop(
    model: Any,
    diffusion: GaussianDiffusion,
    segmap: Tensor,
    *,
    sampler: str = "dpmpp",
    steps: int = 25,
    guidance_scale: float = 1.5,
    eta: float = 0.0,
    generator: Generators = None,
    noise: Tensor | None = None,
    progress: bool = False,
    batched_cfg: bool = True,
    use_spade_cache: bool = True,
    clip_denoised: bool = True,
    channels: int = 3,
    precision: str = "fp32",
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """Sample images for label maps with classifier-free guidance.

    model: ``model(x_t, t, segmap, spade_cache=None) -> [N, 6|3, H, W]`` (and
    ``model.spade_cache(segmap)`` when use_spade_cache), on segmap's device.
    diffusion: the training process (T steps); it is respaced to ``steps``.
    segmap: [N, C, H, W] float, the conditioning (one-hot + edges), on the model's device; its dtype
    is the sampling dtype (float32; float64 with a float64 model).
    sampler: a key of ``SAMPLERS``; eta is DDIM's (and ``distilled``'s) and ignored by the other samplers.
    ``distilled`` (a guidance-distilled student's, ``model.guidance_embedded``) runs DDIM with eta on
    ``grid(steps)`` of the training process instead of the evenly respaced one, and so does ``renoise`` on a
    student (``ON_STUDENT_GRID``); a student runs one pass per step with any sampler.
    generator: one torch.Generator, or one per sample (noise per row), or None (global RNG).
    noise: x_T [N, channels, H, W] to start from (overrides drawing it).
    batched_cfg / use_spade_cache: the exact speed-ups (see ``GuidedDenoiser``);
    both False is the official two-pass, uncached path.
    precision: ``fp32`` (exact, no autocast), ``bf16`` or ``auto`` (``sdm.precision``): the network's
    precision; x_t and the sampler's arithmetic stay in segmap's dtype.
    stats: when given, gets ``cache_nbytes`` (the SPADE cache this call built) and ``precision`` (resolved).
    Returns x_0 [N, channels, H, W] in segmap's dtype, in [-1, 1] when clip_denoised.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if segmap.ndim != 4:
        raise ValueError(f"segmap must be [N, C, H, W], got shape {tuple(segmap.shape)}")
    student = getattr(model, "guidance_embedded", False)
    if sampler == "distilled" and not student:
        raise InputError("sampler 'distilled' needs a guidance-distilled student (model.guidance_embed true "
                         "in its checkpoint's config.json, written by `sdm distill`); this model samples with "
                         f"{', '.join(s for s in SAMPLERS if s != 'distilled')}")
    if student and sampler in ON_STUDENT_GRID:
        process = diffusion.respace_to(grid(steps, diffusion.num_timesteps))
    else:
        process = diffusion.respace(steps)
    device = segmap.device
    # Sampling runs in the segmap's float dtype (float32 normally; float64 for exactness checks).
    dtype = segmap.dtype if segmap.dtype.is_floating_point else torch.float32
    n, _, h, w = segmap.shape
    shape = (n, channels, h, w)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(device=device, dtype=dtype)
    else:
        x = draw_normal(shape, generator, device).to(dtype)

    def draw_noise() -> Tensor:
        return draw_normal(shape, generator, device).to(dtype)

    sample_fn = SAMPLERS[sampler]
    # Each sampler declares the knobs it uses; the others are not its business (eta: ddim and distilled only).
    knobs = {"eta": eta, "draw_noise": draw_noise, "clip_denoised": clip_denoised}
    accepted = inspect.signature(sample_fn).parameters
    indices = list(range(process.num_timesteps))[::-1]
    with torch.no_grad():
        denoiser = GuidedDenoiser(
            model, segmap, guidance_scale, batched_cfg=batched_cfg, use_spade_cache=use_spade_cache,
            precision=precision,
        )
        if stats is not None:
            stats["cache_nbytes"] = denoiser.cache_nbytes
            stats["precision"] = denoiser.precision
        return sample_fn(
            denoiser,
            process,
            x,
            indices=_progress(indices, progress, f"{sampler} s={guidance_scale:g}"),
            **{name: value for name, value in knobs.items() if name in accepted},
        )
