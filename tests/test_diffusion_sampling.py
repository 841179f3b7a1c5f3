"""Samplers, classifier-free guidance and the exact speed-ups (batched CFG, SPADE cache), on stand-in networks."""

from __future__ import annotations

import pytest
import torch
from _diffusion_stand_ins import GaussianDataModel, TinySpadeNet, random_segmap

from sdm.config.schema import DiffusionConfig
from sdm.diffusion import GaussianDiffusion, classifier_free_guidance, sample_loop, space_timesteps

SAMPLERS = ["ddpm", "ddim", "dpmpp", "dpmpp-sde"]


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(), learn_sigma=True)


def _net(seed: int = 0, classes: int = 5) -> TinySpadeNet:
    torch.manual_seed(seed)
    return TinySpadeNet(classes).eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the guidance function ---------------------------------------------------

def test_guidance_at_one_is_the_conditional_output() -> None:
    cond = torch.randn(2, 6, 3, 3)
    assert classifier_free_guidance(cond, None, 1.0) is cond
    assert classifier_free_guidance(cond, torch.randn(2, 6, 3, 3), 1.0) is cond


def test_guidance_combines_eps_only() -> None:
    cond, uncond = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    out = classifier_free_guidance(cond, uncond, 1.5)
    assert torch.allclose(out[:, :3], uncond[:, :3] + 1.5 * (cond[:, :3] - uncond[:, :3]))
    assert torch.equal(out[:, 3:], cond[:, 3:])
    # s = 0 is the unconditional model; without variance channels only eps is returned.
    assert torch.equal(classifier_free_guidance(cond[:, :3], uncond[:, :3], 0.0), uncond[:, :3])
    with pytest.raises(ValueError, match="needs the unconditional output"):
        classifier_free_guidance(cond, None, 2.0)


# -- how the network is called ------------------------------------------------

def test_guidance_one_runs_the_conditional_branch_only(diffusion: GaussianDiffusion) -> None:
    net = _net()
    seg = random_segmap(2, 5, 8, 8)
    sample_loop(net, diffusion, seg, sampler="ddim", steps=4, guidance_scale=1.0, generator=_gen(0))
    assert len(net.calls) == 4
    assert all(c["n"] == 2 and c["null_rows"] == 0 and c["cached"] for c in net.calls)
    assert net.cache_builds == [2]


def test_batched_cfg_is_one_forward_per_step_with_one_cache(diffusion: GaussianDiffusion) -> None:
    net = _net()
    seg = random_segmap(3, 5, 8, 8)
    sample_loop(net, diffusion, seg, sampler="dpmpp", steps=5, guidance_scale=2.0, generator=_gen(0))
    assert len(net.calls) == 5
    assert all(c["n"] == 6 and c["null_rows"] == 3 and c["cached"] for c in net.calls)
    assert net.cache_builds == [6]  # once per sampling call, for [segmap; null]


def test_plain_path_is_two_uncached_forwards_per_step(diffusion: GaussianDiffusion) -> None:
    net = _net()
    seg = random_segmap(3, 5, 8, 8)
    sample_loop(net, diffusion, seg, sampler="ddpm", steps=5, guidance_scale=2.0, generator=_gen(0),
                batched_cfg=False, use_spade_cache=False)
    assert len(net.calls) == 10 and net.cache_builds == []
    assert [c["null_rows"] for c in net.calls] == [0, 3] * 5
    assert not any(c["cached"] for c in net.calls)


def test_network_sees_original_timesteps(diffusion: GaussianDiffusion) -> None:
    net = _net()
    sample_loop(net, diffusion, random_segmap(1, 5, 8, 8), sampler="ddpm", steps=10, guidance_scale=1.0,
                generator=_gen(0))
    assert [c["t"][0] for c in net.calls] == space_timesteps(1000, 10)[::-1]


# -- exactness of the speed-ups -------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
def test_batched_and_cached_paths_give_the_plain_images(diffusion: GaussianDiffusion, sampler: str) -> None:
    net = _net(1)
    seg = random_segmap(2, 5, 8, 8, seed=3)
    kw = dict(sampler=sampler, steps=6, guidance_scale=1.5, eta=0.5)
    plain = sample_loop(net, diffusion, seg, generator=_gen(7), batched_cfg=False, use_spade_cache=False, **kw)
    for batched in (False, True):
        for cached in (False, True):
            fast = sample_loop(net, diffusion, seg, generator=_gen(7), batched_cfg=batched, use_spade_cache=cached,
                               **kw)
            assert torch.equal(fast, plain), (batched, cached)
    # Guidance does something: s = 3 gives other images than s = 1.5.
    other = sample_loop(net, diffusion, seg, generator=_gen(7), **{**kw, "guidance_scale": 3.0})
    assert (other - plain).abs().max() > 1e-3


def test_guidance_one_equals_the_conditional_model_alone(diffusion: GaussianDiffusion) -> None:
    net = _net(2)
    seg = random_segmap(2, 5, 8, 8)
    guided = sample_loop(net, diffusion, seg, sampler="ddim", steps=5, guidance_scale=1.0, generator=_gen(3))

    class CondOnly(torch.nn.Module):
        """The network with the segmap baked in, no guidance machinery."""

        def forward(self, x_t, t, segmap):
            return net(x_t, t, seg)

    alone = sample_loop(CondOnly(), diffusion, torch.zeros_like(seg), sampler="ddim", steps=5, guidance_scale=1.0,
                        generator=_gen(3), use_spade_cache=False)
    assert torch.equal(guided, alone)


# -- determinism and seeding ---------------------------------------------------

@pytest.mark.parametrize("sampler,eta",
                         [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 0.0), ("dpmpp-sde", 0.0),
                          ("renoise", 0.0)])
def test_same_seed_same_images(diffusion: GaussianDiffusion, sampler: str, eta: float) -> None:
    net = _net()
    seg = random_segmap(2, 5, 8, 8)
    kw = dict(sampler=sampler, steps=5, guidance_scale=1.5, eta=eta)
    a = sample_loop(net, diffusion, seg, generator=_gen(11), **kw)
    b = sample_loop(net, diffusion, seg, generator=_gen(11), **kw)
    c = sample_loop(net, diffusion, seg, generator=_gen(12), **kw)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert a.shape == (2, 3, 8, 8) and a.min() >= -1 and a.max() <= 1


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_deterministic_samplers_depend_only_on_x_T(diffusion: GaussianDiffusion, sampler: str) -> None:
    net = _net()
    seg = random_segmap(2, 5, 8, 8)
    x_T = torch.randn(2, 3, 8, 8, generator=_gen(5))
    a = sample_loop(net, diffusion, seg, sampler=sampler, steps=6, eta=0.0, noise=x_T, generator=_gen(1))
    b = sample_loop(net, diffusion, seg, sampler=sampler, steps=6, eta=0.0, noise=x_T, generator=_gen(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp-sde", "renoise"])
def test_stochastic_samplers_use_fresh_noise_each_step(diffusion: GaussianDiffusion, sampler: str) -> None:
    net = _net()
    seg = random_segmap(1, 5, 8, 8)
    x_T = torch.randn(1, 3, 8, 8, generator=_gen(5))
    a = sample_loop(net, diffusion, seg, sampler=sampler, steps=6, noise=x_T, generator=_gen(1))
    b = sample_loop(net, diffusion, seg, sampler=sampler, steps=6, noise=x_T, generator=_gen(2))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_per_sample_generators_make_results_batch_independent(diffusion: GaussianDiffusion, sampler: str) -> None:
    net = _net()
    seg = random_segmap(3, 5, 8, 8)
    kw = dict(sampler=sampler, steps=4, guidance_scale=1.5, eta=1.0)
    together = sample_loop(net, diffusion, seg, generator=[_gen(100 + i) for i in range(3)], **kw)
    alone = torch.cat([sample_loop(net, diffusion, seg[i : i + 1], generator=[_gen(100 + i)], **kw) for i in range(3)])
    # A tolerance, not torch.equal: the network runs on batches of 3 and of 1 here, and CPU conv kernels may
    # round batch sizes differently (they do for the real U-Net); the noise, which is the point, is per row.
    assert (together - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp", "dpmpp-sde", "renoise"])
def test_eta_is_ddims_alone(diffusion: GaussianDiffusion, sampler: str) -> None:
    """sample_loop passes a sampler only the knobs it takes: eta is DDIM's (and a student's ``distilled``, on
    DDIM), the others ignore it."""
    net = _net()
    seg = random_segmap(2, 5, 8, 8)
    a, b = (sample_loop(net, diffusion, seg, sampler=sampler, steps=4, eta=eta, generator=_gen(1)) for eta in (0, 1))
    assert torch.equal(a, b)


def test_samplers_that_inject_noise_need_a_draw(diffusion: GaussianDiffusion) -> None:
    from sdm.diffusion import SAMPLERS as REGISTRY

    process, x = diffusion.respace(3), torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="SDE form of DPM-Solver"):
        REGISTRY["dpmpp-sde"](lambda x_t, t: x_t, process, x, indices=[2, 1, 0])
    with pytest.raises(ValueError, match="DDIM with eta 0.5 injects noise"):
        REGISTRY["ddim"](lambda x_t, t: x_t, process, x, indices=[2, 1, 0], eta=0.5)


def test_progress_bar(diffusion: GaussianDiffusion, capsys: pytest.CaptureFixture[str]) -> None:
    sample_loop(_net(), diffusion, random_segmap(1, 5, 8, 8), sampler="ddim", steps=3, progress=True)
    assert "3/3" in capsys.readouterr().err


# -- correctness of the solvers on data whose exact denoiser is known ---------

def test_dpmpp_two_steps_is_ddim(diffusion: GaussianDiffusion) -> None:
    """DPM-Solver++'s first step is first order (= DDIM) and its last returns the x_0 prediction."""
    net = _net(4)
    seg = random_segmap(2, 5, 8, 8)
    x_T = torch.randn(2, 3, 8, 8, generator=_gen(9))
    a = sample_loop(net, diffusion, seg, sampler="dpmpp", steps=2, noise=x_T)
    b = sample_loop(net, diffusion, seg, sampler="ddim", steps=2, eta=0.0, noise=x_T)
    assert (a - b).abs().max() <= 1e-5


def test_dpmpp_sde_two_steps_is_ddim_eta_one(diffusion: GaussianDiffusion) -> None:
    """SDE-DPM-Solver++'s first-order step is DDIM with eta = 1 (the same noise draw), its last the x_0 prediction."""
    net = _net(4)
    seg = random_segmap(2, 5, 8, 8)
    x_T = torch.randn(2, 3, 8, 8, generator=_gen(9))
    a = sample_loop(net, diffusion, seg, sampler="dpmpp-sde", steps=2, noise=x_T, generator=_gen(3))
    b = sample_loop(net, diffusion, seg, sampler="ddim", steps=2, eta=1.0, noise=x_T, generator=_gen(3))
    assert (a - b).abs().max() <= 1e-5
    c = sample_loop(net, diffusion, seg, sampler="ddim", steps=2, eta=0.0, noise=x_T, generator=_gen(3))
    assert (a - c).abs().max() > 1e-3  # the noise it injects matters


def test_dpmpp_sde_samples_the_data_distribution_at_second_order(diffusion: GaussianDiffusion) -> None:
    """With the exact denoiser, SDE-DPM-Solver++(2M) reaches N(mu, std^2) in 50 steps; first-order DDIM(eta=1) lags.

    The spread is what few-step samplers get wrong (the last steps denoise by E[x_0 | x_t], which shrinks
    it); the mean is right at any step count.
    """
    mu, std = 0.2, 0.3
    model = GaussianDataModel(diffusion, mu, std)
    seg = torch.zeros(4000, 1, 1, 1)

    def moments(sampler: str, steps: int, eta: float) -> tuple[float, float]:
        x0 = sample_loop(model, diffusion, seg, sampler=sampler, steps=steps, guidance_scale=1.0, eta=eta,
                         generator=_gen(0), use_spade_cache=False, clip_denoised=False)
        return float(x0.mean()), abs(float(x0.std()) - std)

    sde = {k: moments("dpmpp-sde", k, 0.0) for k in (25, 50)}
    ddim = {k: moments("ddim", k, 1.0) for k in (25, 50)}
    for mean, _ in (*sde.values(), *ddim.values()):
        assert mean == pytest.approx(mu, abs=0.01)
    assert sde[50][1] < 0.02  # std within 0.02 of 0.3
    for k in (25, 50):
        assert sde[k][1] < ddim[k][1]
    # Second order: doubling the steps cuts the spread error by far more than first order's.
    assert sde[25][1] / sde[50][1] > 3 > ddim[25][1] / ddim[50][1]


def test_ode_samplers_converge_and_dpmpp_is_higher_order(diffusion: GaussianDiffusion) -> None:
    mu, std = 0.2, 0.5
    model = GaussianDataModel(diffusion, mu, std)
    seg = torch.zeros(64, 1, 1, 1)
    x_T = torch.randn(64, 3, 1, 1, generator=_gen(0))
    exact = model.exact_ode_x0(x_T, 999, 0)

    def error(sampler: str, steps: int) -> float:
        x0 = sample_loop(model, diffusion, seg, sampler=sampler, steps=steps, guidance_scale=1.0, noise=x_T,
                         use_spade_cache=False, clip_denoised=False)
        return float((x0.double() - exact).abs().max())

    ddim = [error("ddim", k) for k in (10, 20, 40)]
    dpmpp = [error("dpmpp", k) for k in (10, 20, 40)]
    assert ddim[0] > ddim[1] > ddim[2]
    assert dpmpp[0] > dpmpp[1] > dpmpp[2]
    assert dpmpp[2] < 1e-2
    for k in range(3):
        assert dpmpp[k] < ddim[k]
    # Second order: doubling the steps cuts the error by clearly more than first-order DDIM's ~2x.
    assert dpmpp[1] / dpmpp[2] > 3 > ddim[1] / ddim[2]


@pytest.mark.parametrize("var_value", [-1.0, 1.0])
def test_ddpm_samples_the_data_distribution(diffusion: GaussianDiffusion, var_value: float) -> None:
    """1000 ancestral steps with the exact denoiser give N(mu, std^2), with either end of the learned range."""
    mu, std = 0.2, 0.3
    model = GaussianDataModel(diffusion, mu, std, var_value=var_value)
    n = 2000
    x0 = sample_loop(model, diffusion, torch.zeros(n, 1, 1, 1), sampler="ddpm", steps=1000, guidance_scale=1.0,
                     generator=_gen(0), use_spade_cache=False, clip_denoised=False)
    assert float(x0.mean()) == pytest.approx(mu, abs=0.01)
    assert float(x0.std()) == pytest.approx(std, rel=0.05)


# -- bad arguments -------------------------------------------------------------

def test_bad_arguments(diffusion: GaussianDiffusion) -> None:
    seg = random_segmap(1, 5, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample_loop(_net(), diffusion, seg, sampler="euler")
    with pytest.raises(ValueError, match="cannot respace 1000 diffusion steps to 2000"):
        sample_loop(_net(), diffusion, seg, steps=2000)
    with pytest.raises(ValueError, match="noise has shape"):
        sample_loop(_net(), diffusion, seg, noise=torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="has no spade_cache"):
        sample_loop(torch.nn.Identity(), diffusion, seg)


def test_config_knows_every_sampler() -> None:
    """The config's choices (kept torch-free) are exactly the samplers sample_loop runs."""
    from sdm.config.schema import SAMPLER_NAMES
    from sdm.diffusion.samplers import SAMPLERS as REGISTRY

    assert tuple(REGISTRY) == SAMPLER_NAMES
