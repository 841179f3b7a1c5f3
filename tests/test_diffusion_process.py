"""The forward process, its posterior, respacing and the hybrid loss, against independent float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdm.config.schema import DiffusionConfig
from sdm.diffusion import GaussianDiffusion, cosine_betas, linear_betas, named_beta_schedule, space_timesteps


def test_linear_schedule_is_the_official_one() -> None:
    betas = linear_betas(1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)
    # Scaled by 1000 / T so other step counts cover the same noise range.
    short = linear_betas(250)
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)


def test_cosine_schedule_follows_alpha_bar() -> None:
    betas = cosine_betas(1000)
    abar = np.cumprod(1 - betas)

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert abar[t] == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert betas.max() <= 0.999


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown noise schedule 'sqrt'"):
        named_beta_schedule("sqrt", 10)


def test_q_sample_and_posterior_match_bayes_rule() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=True)
    betas = linear_betas(1000)
    abar = np.cumprod(1 - betas)
    g = torch.Generator().manual_seed(0)
    x_start = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    x_t = diffusion.q_sample(x_start, t, noise)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    for i, ti in enumerate(t.tolist()):
        a = abar[ti]
        assert torch.allclose(x_t[i], math.sqrt(a) * x_start[i] + math.sqrt(1 - a) * noise[i])
        if ti == 0:
            # q(x_{-1} | x_0, x_0) is a point mass at x_0; the log variance is clipped.
            assert torch.allclose(mean[i], x_start[i])
            continue
        # Product of q(x_{t-1} | x_0) and q(x_t | x_{t-1}) as Gaussians in x_{t-1}.
        prev = abar[ti - 1]
        precision = 1 / (1 - prev) + (1 - betas[ti]) / betas[ti]
        ref_var = 1 / precision
        ref_mean = ref_var * (math.sqrt(prev) * x_start[i] / (1 - prev) + math.sqrt(1 - betas[ti]) * x_t[i] / betas[ti])
        assert torch.allclose(mean[i], ref_mean, rtol=1e-9, atol=1e-12)
        assert float(var[i]) == pytest.approx(ref_var, rel=1e-9)
        assert float(log_var[i]) == pytest.approx(math.log(ref_var), rel=1e-9)


def test_respacing_to_all_steps_is_the_plain_schedule() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=True)
    full = diffusion.respace(1000)
    assert full.num_timesteps == 1000
    assert torch.equal(full.timestep_map, torch.arange(1000))
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert torch.allclose(getattr(full, name), getattr(diffusion, name), rtol=1e-10, atol=0), name


def test_respaced_process_keeps_alpha_bar_and_original_timesteps() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=True)
    keep = space_timesteps(1000, 25)
    assert len(keep) == 25 and keep[0] == 0 and keep[-1] == 999
    short = diffusion.respace(25)
    assert short.timestep_map.tolist() == keep
    assert torch.allclose(short.alphas_cumprod, diffusion.alphas_cumprod[keep], rtol=1e-12)
    # The network is fed the original timestep values.
    assert short.model_timesteps(torch.tensor([0, 24])).tolist() == [0, 999]
    # Respacing a respaced process composes the maps.
    assert diffusion.respace(100).respace(10).timestep_map.tolist() == [
        space_timesteps(1000, 100)[i] for i in space_timesteps(100, 10)
    ]


@pytest.mark.parametrize("steps", [0, 1001])
def test_respacing_outside_range_is_an_error(steps: int) -> None:
    with pytest.raises(ValueError, match="cannot respace 1000 diffusion steps"):
        space_timesteps(1000, steps)


# -- the hybrid loss against an independent float64 reference ---------------

def _ref_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _reference_losses(x0, noise, out, t, lambda_vlb, T=1000):
    """Improved DDPM's hybrid loss per sample, in float64 numpy, from first principles."""
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    losses, mses, vbs = [], [], []
    for i, ti in enumerate(t):
        a, b = abar[ti], betas[ti]
        prev = abar[ti - 1] if ti > 0 else 1.0
        x_t = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        eps, v = out[i, :3], out[i, 3:]
        mse = np.mean((noise[i] - eps) ** 2)
        # Posterior q(x_{t-1} | x_t, x_0) by Bayes' rule; its variance is 0 at t = 0, where
        # the log is taken at t = 1 instead.
        k = max(ti, 1)
        post_log_var = -math.log(1 / (1 - abar[k - 1]) + (1 - betas[k]) / betas[k])
        post_mean = (b * math.sqrt(prev) * x0[i] + (1 - prev) * math.sqrt(1 - b) * x_t) / (1 - a)
        # The model: x_0 from eps, its posterior mean, and the learned-range log variance.
        x0_hat = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        model_mean = (b * math.sqrt(prev) * x0_hat + (1 - prev) * math.sqrt(1 - b) * x_t) / (1 - a)
        frac = (v + 1) / 2
        model_log_var = frac * math.log(b) + (1 - frac) * post_log_var
        if ti == 0:
            std = np.exp(0.5 * model_log_var)
            upper = _ref_cdf((x0[i] - model_mean + 1 / 255) / std)
            lower = _ref_cdf((x0[i] - model_mean - 1 / 255) / std)
            prob = np.where(x0[i] < -0.999, upper, np.where(x0[i] > 0.999, 1 - lower, upper - lower))
            vb = -np.mean(np.log(np.maximum(prob, 1e-12))) / math.log(2)
        else:
            kl = 0.5 * (model_log_var - post_log_var + np.exp(post_log_var - model_log_var)
                        + (post_mean - model_mean) ** 2 / np.exp(model_log_var) - 1)
            vb = np.mean(kl) / math.log(2)
        mses.append(mse)
        vbs.append(vb)
        losses.append(mse + lambda_vlb * T * vb)
    return np.array(losses), np.array(mses), np.array(vbs)


class _FixedOutput(torch.nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = torch.nn.Parameter(out.clone())
        self.seen_t: torch.Tensor | None = None

    def forward(self, x_t, t, segmap, spade_cache=None):
        self.seen_t = t
        return self.out


@pytest.mark.parametrize("lambda_vlb", [0.001, 0.01])
def test_hybrid_loss_matches_float64_reference(lambda_vlb: float) -> None:
    g = torch.Generator().manual_seed(1)
    n = 8
    # uint8 images rescaled to [-1, 1], including the extreme bins.
    x0 = torch.randint(0, 256, (n, 3, 4, 4), generator=g).double() / 127.5 - 1
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    out = torch.cat([torch.randn(n, 3, 4, 4, generator=g) * 0.5, torch.rand(n, 3, 4, 4, generator=g) * 2 - 1], 1)
    t = torch.tensor([0, 0, 1, 2, 10, 300, 700, 999])
    diffusion = GaussianDiffusion(DiffusionConfig(lambda_vlb=lambda_vlb), learn_sigma=True)
    model = _FixedOutput(out.double())
    got = diffusion.training_losses(model, x0.float(), t, torch.zeros(n, 1, 4, 4), noise=noise.float())
    ref_loss, ref_mse, ref_vb = _reference_losses(x0.numpy(), noise.numpy(), out.double().numpy(), t.tolist(),
                                                  lambda_vlb)
    assert torch.equal(model.seen_t, t)
    np.testing.assert_allclose(got["mse"].detach().numpy(), ref_mse, rtol=1e-5)
    np.testing.assert_allclose(got["vb"].detach().numpy(), ref_vb, rtol=2e-5)
    np.testing.assert_allclose(got["loss"].detach().numpy(), ref_loss, rtol=2e-5)
    assert got["vb"][:2].abs().min() > 0  # the decoder NLL terms are there


def test_vlb_term_does_not_train_the_mean() -> None:
    """Stop-gradient on eps: the VLB term's gradient reaches only the variance channels."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=True)
    model = _FixedOutput(torch.randn(4, 6, 4, 4, generator=g))
    terms = diffusion.training_losses(model, x0, torch.tensor([0, 5, 50, 500]), torch.zeros(4, 1, 4, 4))
    terms["vb"].sum().backward()
    assert model.out.grad[:, :3].abs().max() == 0
    assert model.out.grad[:, 3:].abs().max() > 0
    model.out.grad = None
    terms = diffusion.training_losses(model, x0, torch.tensor([0, 5, 50, 500]), torch.zeros(4, 1, 4, 4))
    terms["mse"].sum().backward()
    assert model.out.grad[:, 3:].abs().max() == 0 and model.out.grad[:, :3].abs().max() > 0


def test_fixed_variance_without_learn_sigma() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=False)
    model = _FixedOutput(torch.zeros(2, 3, 4, 4))
    terms = diffusion.training_losses(model, torch.zeros(2, 3, 4, 4), torch.tensor([3, 7]), torch.zeros(2, 1, 4, 4),
                                      noise=torch.ones(2, 3, 4, 4))
    assert torch.equal(terms["vb"], torch.zeros(2))
    assert torch.allclose(terms["loss"], torch.ones(2))
    # "Fixed large" variance: beta_t, with the posterior's at t = 0.
    out = diffusion.p_mean_variance(torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1), torch.tensor([0, 9]))
    assert float(out["variance"][1, 0]) == pytest.approx(linear_betas(1000)[9])
    assert float(out["variance"][0, 0]) == pytest.approx(float(diffusion.posterior_variance[1]))


def test_learned_range_endpoints() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(), learn_sigma=True)
    x = torch.zeros(1, 3, 2, 2)
    t = torch.tensor([400])
    for v, expected in ((1.0, diffusion.betas[400]), (-1.0, diffusion.posterior_variance[400])):
        out = diffusion.p_mean_variance(torch.cat([x, torch.full_like(x, v)], 1), x, t)
        assert torch.allclose(out["variance"], torch.full_like(x, float(expected)), rtol=1e-5)
