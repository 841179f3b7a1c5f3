"""The speed-ups are exact on the real SDMUNet: batched CFG + SPADE cache give the plain (official) path's images."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import perturbed

from sdm.conditioning import make_segmap
from sdm.config.schema import Config, ModelConfig
from sdm.diffusion import GaussianDiffusion, GuidedDenoiser, sample_loop
from sdm.model import SDMUNet

PATHS = [(True, True), (True, False), (False, True)]  # (batched_cfg, use_spade_cache); plain is (False, False)


@pytest.fixture(scope="module")
def diffusion(toy: Config) -> GaussianDiffusion:
    return GaussianDiffusion(toy.diffusion, toy.model.learn_sigma)


def _segmap(config: ModelConfig, n: int, seed: int = 0) -> torch.Tensor:
    h, w = config.image_size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, config.num_classes, (n, h // 4, w // 4), generator=g)
    return make_segmap(coarse.repeat_interleave(4, 1).repeat_interleave(4, 2), None, config)


def _sample(model, diffusion, segmap, batched: bool, cached: bool, **kw) -> torch.Tensor:
    return sample_loop(model, diffusion, segmap, generator=torch.Generator().manual_seed(0), batched_cfg=batched,
                       use_spade_cache=cached, **kw)


@pytest.mark.parametrize("n", [1, 2])
def test_each_guided_step_matches(toy: Config, toy_model: SDMUNet, n: int) -> None:
    """Per network call: the guided output of every path equals the plain one (fp32), bit for bit where it can.

    CPU conv kernels round a batch of 1 differently from a batch of 2+, so two kinds of call differ from the
    plain path by float rounding (<= 1e-5): the batched paths for ONE label map (their convs run on 2 rows
    where the plain path's run on 1), and the unbatched cached path for two (the cache computes the null
    map's SPADE modulation once for its identical rows: on 1 row where the plain path's convs run on 2).
    """
    segmap = _segmap(toy.model, n)
    x_t = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = GuidedDenoiser(toy_model, segmap, 1.5, batched_cfg=False, use_spade_cache=False)
        fast = [GuidedDenoiser(toy_model, segmap, 1.5, batched_cfg=b, use_spade_cache=c) for b, c in PATHS]
        for t in (999, 500, 0):
            tt = torch.full((n,), t)
            ref = plain(x_t, tt)
            for (batched, cached), den in zip(PATHS, fast, strict=True):
                out = den(x_t, tt)
                batch_one_against_two = batched if n == 1 else not batched  # see the docstring
                if batch_one_against_two:
                    assert (out - ref).abs().max() <= 1e-5, (t, batched, cached)
                else:
                    assert torch.equal(out, ref), (t, batched, cached)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp", "dpmpp-sde"])
def test_fast_path_gives_the_plain_images_fp32(toy: Config, toy_model: SDMUNet, diffusion: GaussianDiffusion,
                                               sampler: str) -> None:
    """Whole fp32 sampling: our path (one batched forward, cached SPADE) gives the official two passes' images exactly.

    The sampler amplifies per-call rounding (x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) at high noise),
    so this holds because the U-Net's rows do not depend on the batch size (the timestep embedding is
    computed once for a shared t, SPADE rounds alike cached or not). A batch of ONE label map is the
    exception: the CPU conv kernels for batch 1 and batch 2 round differently; its per-call agreement is
    checked above and its images in float64 below (as the unbatched cached path's, whose null-map cache
    is one row).
    """
    segmap = _segmap(toy.model, 2)
    kw = dict(sampler=sampler, steps=4, guidance_scale=1.5, eta=1.0)
    plain = _sample(toy_model, diffusion, segmap, False, False, **kw)
    for batched, cached in ((True, True), (True, False)):
        fast = _sample(toy_model, diffusion, segmap, batched, cached, **kw)
        assert torch.equal(fast, plain), (batched, cached)
    # The label map and the guidance matter, so the equality says something.
    other = _sample(toy_model, diffusion, _segmap(toy.model, 2, seed=1), True, True, **kw)
    assert (other - plain).abs().max() > 1e-3
    unguided = _sample(toy_model, diffusion, segmap, True, True, **{**kw, "guidance_scale": 1.0})
    assert (unguided - plain).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp", "dpmpp-sde"])
def test_every_path_agrees_in_float64(toy: Config, toy_model: SDMUNet, diffusion: GaussianDiffusion,
                                      sampler: str) -> None:
    """In float64 every path gives the plain images to float64 rounding, one label map too: a logic error
    shows as a difference of 1e-4 or more.

    Whether batch 1 and batch 2 round alike in float64 depends on the CPU: they do on AVX2 machines (torch's
    float64 convs work row by row there), and differ by ~1e-13 on AVX-512 ones (Sapphire Rapids, measured).
    """
    model = SDMUNet(toy.model).double()
    model.load_state_dict(toy_model.state_dict())
    model.eval()
    segmap = _segmap(toy.model, 1).double()
    kw = dict(sampler=sampler, steps=3, guidance_scale=2.0, eta=1.0)
    plain = _sample(model, diffusion, segmap, False, False, **kw)
    assert plain.dtype == torch.float64
    for batched, cached in PATHS:
        fast = _sample(model, diffusion, segmap, batched, cached, **kw)
        assert (fast - plain).abs().max() <= 1e-10, (batched, cached)
    # The guidance matters, so the agreement says something.
    unguided = _sample(model, diffusion, segmap, True, True, **{**kw, "guidance_scale": 1.0})
    assert (unguided - plain).abs().max() > 1e-3


def test_non_square_model(toy: Config, diffusion: GaussianDiffusion) -> None:
    cfg = ModelConfig(image_size=[16, 32], num_classes=4, use_instance=False, model_channels=32,
                      channel_mult=[1.0, 2.0], attention_resolutions=[16], num_heads=1, spade_hidden=16)
    torch.manual_seed(0)
    model = perturbed(SDMUNet(cfg))
    segmap = _segmap(cfg, 2)
    fast = _sample(model, diffusion, segmap, True, True, sampler="ddim", steps=3)
    plain = _sample(model, diffusion, segmap, False, False, sampler="ddim", steps=3)
    assert fast.shape == (2, 3, 16, 32) and torch.equal(fast, plain)


def test_grouped_label_maps_share_the_encoder(toy: Config, toy_model: SDMUNet) -> None:
    """SDMUNet with k*N label maps for N x_t rows == the forward of x_t repeated k times (cached or not)."""
    segmap = torch.cat([_segmap(toy.model, 2), _segmap(toy.model, 2, seed=5), torch.zeros_like(_segmap(toy.model, 2))])
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([700, 20])
    with torch.no_grad():
        ref = toy_model(x_t.repeat(3, 1, 1, 1), t.repeat(3), segmap)
        grouped = toy_model(x_t, t, segmap)
        cached = toy_model(x_t, t, None, spade_cache=toy_model.spade_cache(segmap))
    assert grouped.shape == (6, 6, 32, 32)
    # Not bit for bit: the reference's encoder runs on the 6 repeated rows, the grouped one's on 2, and the
    # CPU conv kernels round those batch sizes differently (about 4e-6 here).
    assert (grouped - ref).abs().max() <= 1e-5 and (cached - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="segmap must be"):
        toy_model(x_t, t, segmap[:5])
