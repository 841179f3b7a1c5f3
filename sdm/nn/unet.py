"""SDMUNet: the SPADE diffusion U-Net of SDM (arXiv 2207.00050).

The encoder (``input_blocks``) is a guided-diffusion U-Net encoder fed only
x_t; the ``middle_block`` and decoder (``output_blocks``) ResBlocks normalise
with SPADE norms fed the label map. Module names mirror the official release
so its state dicts load key for key (see ``sdm.official_checkpoint``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sdm.config.load import ConfigError
from sdm.config.schema import ModelConfig
from sdm.errors import InputError
from sdm.nn.attention import AttentionBlock, resolve_heads
from sdm.nn.layers import NORM_GROUPS, Downsample, Upsample, group_norm, zero_init
from sdm.nn.resblock import ResBlock
from sdm.nn.spade import SpadeCache, SPADEGroupNorm, build_spade_cache
from sdm.nn.spade_resblock import SPADEResBlock


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed timesteps as sinusoids of geometrically spaced frequencies (guided-diffusion layout).

    t: [N] timesteps (long or float; a respaced sampler passes the original
    timestep values, which may be fractional). Returns float32 [N, dim]:
    ``cos(t * f_i)`` for the first half, ``sin(t * f_i)`` for the second, with
    ``f_i = max_period ** (-i / (dim // 2))``; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


# The guidance scale is embedded as sinusoids of w * GUIDANCE_EMBED_SCALE: scales of 0..10 (the serving range)
# then span 0..100, where timestep_embedding's frequency ladder gives both oscillating and near-linear features
# of w. On the stage-one overfit of tests/test_distill_student.py, 10 fitted the guided target closer than
# 1 or 100 (gap at w = 1.5: 1.7e-4 against 2.7e-4 and 2.1e-4 after the same 200 steps).
GUIDANCE_EMBED_SCALE = 10.0


class GuidanceScaleError(InputError):
    """A guidance scale given to a network without a guidance embedding, or missing for one with it."""


class ImageSizeError(InputError):
    """An image / label map size the U-Net cannot halve the required number of times."""


class Stage(nn.Sequential):
    """A sequence of layers; each gets what it needs of (h, emb, label-map condition)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | SpadeCache) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, SPADEResBlock):
                h = layer(h, emb, cond)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h


def size_multiple(config: ModelConfig) -> int:
    """H and W must be multiples of this: the U-Net halves them len(channel_mult) - 1 times."""
    return 2 ** (len(config.channel_mult) - 1)


def check_image_size(size: tuple[int, int] | list[int], config: ModelConfig, what: str = "image size") -> None:
    """Raise ``ImageSizeError`` naming the size and the required multiple when H or W is not divisible."""
    m = size_multiple(config)
    h, w = int(size[0]), int(size[1])
    if h % m or w % m:
        raise ImageSizeError(f"{what} {h}x{w} cannot go through this U-Net: height and width must be multiples of "
                             f"{m} (= 2**(len(channel_mult)-1), it halves the size {len(config.channel_mult) - 1} "
                             f"times); resize or crop to e.g. {h // m * m or m}x{w // m * m or m}")


def _validate(config: ModelConfig) -> tuple[list[int], set[int]]:
    """Channel counts per level and the attention downsampling factors; ConfigError on impossible settings."""
    if not config.channel_mult:
        raise ConfigError("model.channel_mult: needs at least one level")
    chans = [int(m * config.model_channels) for m in config.channel_mult]
    for level, (mult, ch) in enumerate(zip(config.channel_mult, chans, strict=True)):
        if ch <= 0 or ch % NORM_GROUPS:
            raise ConfigError(f"model.channel_mult[{level}]={mult} x model.model_channels={config.model_channels} "
                              f"gives {ch} channels: GroupNorm uses {NORM_GROUPS} groups, so every level needs a "
                              f"multiple of {NORM_GROUPS}")
    try:
        check_image_size(config.image_size, config, "model.image_size")
    except ImageSizeError as e:
        raise ConfigError(str(e)) from None
    longest = max(config.image_size)
    sizes = [longest // 2**level for level in range(len(chans))]
    attn_ds = set()
    for res in config.attention_resolutions:
        if res not in sizes:
            raise ConfigError(f"model.attention_resolutions: {res} is not a feature size of this U-Net; along the "
                              f"longer side ({longest}) its feature sizes are {', '.join(map(str, sizes))}")
        attn_ds.add(longest // res)
    return chans, attn_ds


class SDMUNet(nn.Module):
    """The SPADE diffusion U-Net.

    ``forward(x_t [N,3,H,W] float, t [N] long, segmap [N,cond_channels,H,W] float)``
    returns [N, 6 if learn_sigma else 3, H, W]: epsilon (+ the variance
    interpolation v in [-1, 1] scale when learn_sigma). H and W must be
    multiples of 2**(len(channel_mult)-1); attention sits at the feature sizes
    (along the longer side) listed in ``attention_resolutions``.

    With ``config.guidance_embed`` (a guidance-distilled student, ``sdm.distill``) forward also takes
    ``guidance_scale`` (a float or [N] floats, required): it is embedded like the timestep (``guidance_embed``,
    an MLP whose last Linear starts at zero, so a fresh student equals the network it was copied from) and
    added to the time embedding. Without the flag the network and its state-dict keys are the official ones.
    """

    # forward accepts k label maps per x_t row (segmap of k*N rows) and runs the encoder once:
    # guided samplers use this to batch [cond; null] without running the encoder twice.
    shares_encoder = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        chans, attn_ds = _validate(config)
        self.config = config
        mc = config.model_channels
        emb_dim = 4 * mc
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        for ch in set(chans):
            resolve_heads(ch, config.num_heads, config.num_head_channels)
            resolve_heads(ch, heads_up, config.num_head_channels)

        def resblock(ch_in: int, ch_out: int, updown: str | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, config.dropout, ch_out, config.use_scale_shift_norm,
                            config.use_checkpoint, updown)

        def spade_resblock(ch_in: int, ch_out: int, ds: int, updown: str | None = None) -> SPADEResBlock:
            block = SPADEResBlock(ch_in, emb_dim, config.dropout, config.cond_channels, ch_out,
                                  config.use_scale_shift_norm, config.use_checkpoint, updown, config.spade_hidden)
            block.set_ds(ds)
            return block

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, config.num_head_channels, config.use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.guidance_embed:
            self.guidance_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                                zero_init(nn.Linear(emb_dim, emb_dim)))

        ch = chans[0]
        self.input_blocks = nn.ModuleList([Stage(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        last = len(chans) - 1
        for level, level_ch in enumerate(chans):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, level_ch)]
                ch = level_ch
                if ds in attn_ds:
                    layers.append(attention(ch, config.num_heads))
                self.input_blocks.append(Stage(*layers))
                skip_chans.append(ch)
            if level != last:
                down = resblock(ch, ch, "down") if config.resblock_updown else Downsample(ch)
                self.input_blocks.append(Stage(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = Stage(
            spade_resblock(ch, ch, ds), attention(ch, config.num_heads), spade_resblock(ch, ch, ds)
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(chans))):
            for i in range(config.num_res_blocks + 1):
                layers = [spade_resblock(ch + skip_chans.pop(), chans[level], ds)]
                ch = chans[level]
                if ds in attn_ds:
                    layers.append(attention(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(spade_resblock(ch, ch, ds, "up") if config.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, config.out_channels, 3, padding=1)))

        # Indexed once, in forward order, so a SpadeCache can address every norm.
        self._spade_norms = [m for m in self.modules() if isinstance(m, SPADEGroupNorm)]
        for i, norm in enumerate(self._spade_norms):
            norm.cache_index = i

    @property
    def guidance_embedded(self) -> bool:
        """True for a guidance-distilled student: forward takes the guidance scale and gives the guided output."""
        return bool(self.config.guidance_embed)

    def _guidance_emb(self, guidance_scale: float | torch.Tensor | None, n: int, like: torch.Tensor
                      ) -> torch.Tensor | None:
        """The embedding [1 | N, emb_dim] of the scale(s) to add to the time embedding (None without the flag)."""
        if not self.config.guidance_embed:
            if guidance_scale is not None:
                raise GuidanceScaleError("this network has no guidance embedding (model.guidance_embed is false): "
                                         "it takes no guidance_scale; guide it with the conditional and null "
                                         "passes (sdm.diffusion.GuidedDenoiser)")
            return None
        if guidance_scale is None:
            raise GuidanceScaleError("this network embeds the guidance scale (model.guidance_embed is true): "
                                     "forward needs guidance_scale (a float or [N] floats)")
        w = torch.as_tensor(guidance_scale, dtype=torch.float32, device=like.device)
        if w.ndim == 0:
            w = w.reshape(1)
        elif w.shape != (n,):
            raise ValueError(f"guidance_scale must be a float or [N] = [{n}] floats, got shape {list(w.shape)}")
        elif bool((w == w[0]).all()):
            w = w[:1]  # one scale for the batch: embed once and broadcast, as for t
        return self.guidance_embed(timestep_embedding(w * GUIDANCE_EMBED_SCALE, self.config.model_channels)
                                   .to(like.dtype))

    @property
    def spade_norms(self) -> list[SPADEGroupNorm]:
        return list(self._spade_norms)

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, segmap: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels:
            raise ValueError(f"x_t must be [N,{cfg.in_channels},H,W], got {list(x_t.shape)}")
        n = x_t.shape[0]
        check_image_size(x_t.shape[-2:], cfg)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t must be [N] = [{n}] timesteps, got {list(t.shape)}")
        if segmap is not None:
            want = [n, cfg.cond_channels, *x_t.shape[-2:]]
            if segmap.ndim != 4 or list(segmap.shape[1:]) != want[1:] or segmap.shape[0] % n:
                raise ValueError(f"segmap must be {want} (num_classes={cfg.num_classes}"
                                 f"{' + 1 instance-edge channel' if cfg.use_instance else ''}, the size of x_t; "
                                 f"or k*{n} rows for k label maps per x_t row), got {list(segmap.shape)}")
        return t

    def spade_cache(self, segmap: torch.Tensor) -> SpadeCache:
        """gamma/beta of every SPADE norm for segmap [N,cond_channels,H,W], to pass to ``forward``.

        Equal outputs to the uncached forward (to float rounding). No gradients.
        """
        cfg = self.config
        if segmap.ndim != 4 or segmap.shape[1] != cfg.cond_channels:
            raise ValueError(f"segmap must be [N,{cfg.cond_channels},H,W], got {list(segmap.shape)}")
        check_image_size(segmap.shape[-2:], cfg, "label map size")
        param = self.out[2].weight
        return build_spade_cache(self._spade_norms, segmap.to(device=param.device, dtype=param.dtype))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, segmap: torch.Tensor | None,
                spade_cache: SpadeCache | None = None,
                guidance_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """x_t [N,3,H,W], t [N], segmap [N,K,H,W] (may be None with a cache) -> [N, 6|3, H, W].

        guidance_scale: only for a network with ``config.guidance_embed`` (and required there): w as a float
        or [N] floats; the output is then the guided one for w in one pass.

        segmap (or the cache) may also hold k*N rows, k label maps per x_t row in k groups of N
        (classifier-free guidance: [cond; null]): the output is then [k*N, 6|3, H, W], row g*N + i for
        x_t[i] under label map g*N + i, equal to the forward of x_t repeated k times, with the
        encoder (which never sees the label map) run once.
        """
        t = self._check_inputs(x_t, t, segmap)
        if spade_cache is None:
            if segmap is None:
                raise ValueError("forward needs a segmap (or a spade_cache built from one)")
            cond: torch.Tensor | SpadeCache = segmap.to(x_t.dtype)
        else:
            if spade_cache.segmap_shape[0] % x_t.shape[0] or tuple(spade_cache.segmap_shape[-2:]) != x_t.shape[-2:]:
                raise ValueError(f"spade_cache was built for a segmap of shape {list(spade_cache.segmap_shape)}, "
                                 f"but x_t is {list(x_t.shape)}")
            cond = spade_cache
        rows = spade_cache.segmap_shape[0] if spade_cache is not None else segmap.shape[0]  # type: ignore[union-attr]
        # Sampling feeds every row the same t: embed it once as [1, E] and let the blocks broadcast it.
        # Besides the saved work, a row's result then does not depend on the batch size (matmul kernels
        # round differently for different batch sizes), so one batched guidance forward of [cond; null]
        # gives bit-identical outputs to two separate passes.
        t_emb = t[:1] if t.shape[0] > 1 and bool((t == t[0]).all()) else t
        emb = self.time_embed(timestep_embedding(t_emb, self.config.model_channels).to(x_t.dtype))
        g_emb = self._guidance_emb(guidance_scale, x_t.shape[0], x_t)
        if g_emb is not None:
            emb = emb + g_emb
        skips = []
        h = x_t
        for block in self.input_blocks:
            h = block(h, emb, cond)
            skips.append(h)
        if rows != x_t.shape[0]:
            # k label maps per x_t row (guidance: [cond; null]): the encoder sees x_t only, so it ran once
            # on the N rows; its activations are repeated for the k groups of the middle and decoder.
            groups = rows // x_t.shape[0]
            h, skips = h.repeat(groups, 1, 1, 1), [s.repeat(groups, 1, 1, 1) for s in skips]
            if emb.shape[0] > 1:
                emb = emb.repeat(groups, 1)
        h = self.middle_block(h, emb, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)
        return self.out(h)
