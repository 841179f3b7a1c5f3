"""Classifier-free guidance (Ho & Salimans) as SDM applies it, and the guided per-step network call.

The rule (``classifier_free_guidance``) works on the epsilon channels only; the
denoiser (``GuidedDenoiser``) is what every sampler calls: the conditional and
null branches, batched or not, with the SPADE cache or not. Its speed-ups over
the official sampler give the same outputs:
  * batched CFG: the conditional and null rows go through ONE forward of batch 2N (with a
    model that supports it, ``shares_encoder``, the encoder, which never sees the label map,
    runs once on the N rows);
  * SPADE cache: every SPADE gamma/beta depends only on the label map, never on
    x_t or t, so they are computed once per sampling call and reused at every step.
``batched_cfg=False, use_spade_cache=False`` is the official (plain) path.

A guidance-distilled student (``model.guidance_embedded``, ``sdm.distill``) takes the scale as an input:
the denoiser then runs ONE pass per step, ``model(x_t, t, segmap, guidance_scale=s)``, for any sampler.

``precision``: ``fp32`` (the exact path: no autocast), ``bf16`` or ``auto`` (bf16 where the
device runs it natively, ``sdm.precision``): the forwards and the cache build run under bf16
autocast, so the SPADE cache is stored in bf16; the sampler's state x_t stays in its own dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdm.conditioning import null_segmap_like
from sdm.precision import autocast_context, resolve_precision


def classifier_free_guidance(
    out_cond: Tensor, out_uncond: Tensor | None, guidance_scale: float, eps_channels: int = 3
) -> Tensor:
    """eps = eps_uncond + s * (eps_cond - eps_uncond); the variance channels come from the conditional branch.

    ``out_cond`` / ``out_uncond``: model outputs [N, 6|3, H, W] for the label map
    and for the null (all-zero) label map. At s == 1 the conditional output is
    returned as it is (and the unconditional one may be None: it is not needed).
    """
    if guidance_scale == 1.0:
        return out_cond
    if out_uncond is None:
        raise ValueError(f"guidance_scale {guidance_scale} needs the unconditional output")
    if out_cond.shape != out_uncond.shape:
        raise ValueError(f"conditional output {tuple(out_cond.shape)} and unconditional "
                         f"{tuple(out_uncond.shape)} differ")
    eps_c, eps_u = out_cond[:, :eps_channels], out_uncond[:, :eps_channels]
    eps = eps_u + guidance_scale * (eps_c - eps_u)
    return torch.cat([eps, out_cond[:, eps_channels:]], dim=1)


class GuidedDenoiser:
    """``denoiser(x_t [N,3,H,W], t [N] original timesteps) -> guided model output [N, 6|3, H, W]`` (x_t's dtype).

    model: ``model(x_t, t, segmap, spade_cache=None)`` (and ``model.spade_cache(segmap)``
    when use_spade_cache); segmap [N, C, H, W], the conditioning on the model's device.
    """

    def __init__(
        self,
        model: Any,
        segmap: Tensor,
        guidance_scale: float,
        *,
        batched_cfg: bool = True,
        use_spade_cache: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.precision = resolve_precision(precision, segmap.device)
        self._device = segmap.device
        self.guidance_scale = float(guidance_scale)
        # A student embeds the scale: one pass with it as input, no null branch.
        self.embedded = bool(getattr(model, "guidance_embedded", False))
        self.guided = self.guidance_scale != 1.0 and not self.embedded
        self.batched = batched_cfg and self.guided
        if use_spade_cache and not callable(getattr(model, "spade_cache", None)):
            raise TypeError(f"{type(model).__name__} has no spade_cache(segmap); sample with use_spade_cache=False")
        self.segmap = segmap
        # A model that takes k label maps per x_t row (SDMUNet) runs its encoder once for cond and null.
        self.shares_encoder = bool(getattr(model, "shares_encoder", False))
        self.null = null_segmap_like(segmap) if self.guided else None
        with self._autocast():
            if self.batched:
                # One label-map batch [cond; null] for every step, and its cache.
                self.segmap_in = torch.cat([segmap, self.null])
                self.cache = model.spade_cache(self.segmap_in) if use_spade_cache else None
            else:
                self.cache = model.spade_cache(segmap) if use_spade_cache else None
                self.null_cache = model.spade_cache(self.null) if use_spade_cache and self.guided else None

    def _autocast(self) -> Any:
        return autocast_context(self.precision, self._device)

    @property
    def cache_nbytes(self) -> int:
        """Bytes of the SPADE cache(s) this denoiser holds (0 without a cache)."""
        caches = [self.cache, getattr(self, "null_cache", None)]
        return sum(int(getattr(c, "nbytes", 0)) for c in caches if c is not None)

    def _forward(self, x_t: Tensor, t: Tensor, segmap: Tensor, cache: Any) -> Tensor:
        # Only a student gets the keyword: other models (and stand-ins) keep their plain signature.
        extra = {"guidance_scale": self.guidance_scale} if self.embedded else {}
        with self._autocast():
            if cache is None:
                out = self.model(x_t, t, segmap, **extra)
            else:
                out = self.model(x_t, t, segmap, spade_cache=cache, **extra)
        return out.to(x_t.dtype)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if not self.guided:
            return self._forward(x_t, t, self.segmap, self.cache)
        if self.batched:
            if self.shares_encoder:
                # One forward; the label-map-free encoder runs once for both halves.
                out = self._forward(x_t, t, self.segmap_in, self.cache)
            else:
                out = self._forward(torch.cat([x_t, x_t]), torch.cat([t, t]), self.segmap_in, self.cache)
            out_cond, out_uncond = out.chunk(2)
        else:
            out_cond = self._forward(x_t, t, self.segmap, self.cache)
            out_uncond = self._forward(x_t, t, self.null, self.null_cache)
        return classifier_free_guidance(out_cond, out_uncond, self.guidance_scale)
