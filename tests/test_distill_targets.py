"""Stage two's formulas (sdm.distill.targets) and the halving objective: exact on closed-form stand-ins."""

from __future__ import annotations

import math

import pytest
import torch
from _distill_helpers import embedded_model, segmaps, tiny_teacher, tiny_teacher_config
from _train_helpers import one_thread

from sdm.config.schema import DiffusionConfig
from sdm.diffusion import GaussianDiffusion, GuidedDenoiser, classifier_free_guidance
from sdm.diffusion.samplers import ddim_sample, distilled_sample
from sdm.distill import targets
from sdm.distill.objective import DistillSetupError, Objective
from sdm.errors import InputError

T = 1000
# Two torch threads on a busy 2-core machine can be 50x slower than one.
single_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(), learn_sigma=False)


def test_grid_values_subsets_and_errors() -> None:
    assert targets.grid(8) == [124, 249, 374, 499, 624, 749, 874, 999]
    assert targets.grid(1) == [999] and targets.grid(2) == [499, 999]
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        coarse, fine = targets.grid(n), targets.grid(2 * n)
        assert set(coarse) <= set(fine) and fine[1::2] == coarse
        assert coarse == sorted(set(coarse)) and coarse[-1] == T - 1
    assert targets.grid(3, 10) == [2, 6, 9]
    with pytest.raises(InputError, match=r"1\.\.1000 steps \(diffusion.steps\), got 2000"):
        targets.grid(2000)


def test_halving_timesteps_map_the_loops_draw_onto_the_grids() -> None:
    t = torch.tensor([0, 249, 250, 999])
    student, mid, end = targets.halving_timesteps(t, 4, T)  # student grid(4), teacher grid(8)
    assert student.tolist() == [249, 249, 499, 999]
    assert mid.tolist() == [124, 124, 374, 874]
    assert end.tolist() == [targets.X0, targets.X0, 249, 749]
    # Every student timestep is on grid(n); its two teacher steps are consecutive grid(2n) entries.
    every = torch.arange(T)
    s, m, e = targets.halving_timesteps(every, 8, T)
    assert set(s.tolist()) == set(targets.grid(8))
    fine = [targets.X0, *targets.grid(16)]
    for a, b, c in zip(s.tolist(), m.tolist(), e.tolist(), strict=True):
        assert fine.index(a) == fine.index(b) + 1 == fine.index(c) + 2


def test_truncated_snr_weight_and_x0_row() -> None:
    abar = torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    assert torch.allclose(targets.truncated_snr_weight(abar), torch.tensor([1.0, 1.0, 9.0, 99.0], dtype=torch.float64))
    table = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    assert targets.abar_at(table, torch.tensor([targets.X0, 0, 2])).tolist() == [1.0, 0.9, 0.1]
    # A DDIM step to x_0 (abar 1) lands on the x prediction.
    z, eps = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    abar_t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.allclose(targets.ddim_step(z, eps, abar_t, torch.ones(2, dtype=torch.float64)),
                          targets.predict_x(z, eps, abar_t))


def test_guided_target_is_cfg_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 6, 4, 4, generator=g), torch.randn(3, 6, 4, 4, generator=g)
    w = torch.tensor([1.0, 1.5, 3.0])
    out = targets.guided_target(cond, uncond, w)
    for i in range(3):
        assert torch.allclose(out[i : i + 1], classifier_free_guidance(cond[i : i + 1], uncond[i : i + 1], float(w[i])))
    with pytest.raises(ValueError, match=r"guidance_scale must be \[N\] = \[3\]"):
        targets.guided_target(cond, uncond, w[:2])


class LinearDenoiser:
    """A closed-form teacher: eps(z, t) = a_t z + b_t c (a_t, b_t fixed per timestep, c a fixed image); float64."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a = 0.3 * torch.rand(T, generator=g, dtype=torch.float64)
        self.b = torch.randn(T, generator=g, dtype=torch.float64)
        self.c = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t].view(-1, 1, 1, 1) * z + self.b[t].view(-1, 1, 1, 1) * self.c


@pytest.mark.parametrize("j", [0, 1, 3])
def test_one_step_of_the_target_reproduces_the_teachers_two(diffusion: GaussianDiffusion, j: int) -> None:
    """x_tilde is exact: the student's single DDIM step with x_hat = x_tilde lands where the teacher's two did."""
    eps_teacher, n = LinearDenoiser(), 4
    t = torch.full((2,), targets.grid(n)[j])
    t_s, t_mid, t_end = targets.halving_timesteps(t, n, T)
    assert t_s.tolist() == t.tolist()
    abar = [targets.abar_at(diffusion.alphas_cumprod, s) for s in (t_s, t_mid, t_end)]
    z_t = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(j))
    z_mid = targets.ddim_step(z_t, eps_teacher(z_t, t_s), abar[0], abar[1])
    z_end = targets.ddim_step(z_mid, eps_teacher(z_mid, t_mid), abar[1], abar[2])
    x_tilde = targets.two_step_target(z_t, z_end, abar[0], abar[2])
    eps_student = (z_t - abar[0].sqrt().view(-1, 1, 1, 1) * x_tilde) / (1 - abar[0]).sqrt().view(-1, 1, 1, 1)
    one_step = targets.ddim_step(z_t, eps_student, abar[0], abar[2])
    assert (one_step - z_end).abs().max() <= 1e-10 * z_end.abs().max()
    assert torch.allclose(targets.predict_x(z_t, eps_student, abar[0]), x_tilde)
    # The teacher's own single step does not get there (the test can fail).
    assert (targets.ddim_step(z_t, eps_teacher(z_t, t_s), abar[0], abar[2]) - z_end).abs().max() > 1e-3


def test_ideal_student_on_the_distilled_sampler_equals_the_teacher_on_twice_the_grid(
        diffusion: GaussianDiffusion) -> None:
    """The real samplers: ``distilled`` on grid(n) with the exact student == DDIM eta 0 on grid(2n) with the
    teacher, x_T to x_0 (unclipped): the grids, the original timesteps fed and the final step to x_0 agree."""
    teacher, n = LinearDenoiser(1), 4
    table = diffusion.alphas_cumprod

    def student(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_s, t_mid, t_end = targets.halving_timesteps(t, n, T)
        assert t_s.tolist() == t.tolist()  # the sampler feeds grid(n)'s original timesteps
        a_t, a_mid, a_end = (targets.abar_at(table, s) for s in (t_s, t_mid, t_end))
        z_mid = targets.ddim_step(z, teacher(z, t_s), a_t, a_mid)
        z_end = targets.ddim_step(z_mid, teacher(z_mid, t_mid), a_mid, a_end)
        x_tilde = targets.two_step_target(z, z_end, a_t, a_end)
        return (z - a_t.sqrt().view(-1, 1, 1, 1) * x_tilde) / (1 - a_t).sqrt().view(-1, 1, 1, 1)

    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fine = diffusion.respace_to(targets.grid(2 * n))
    coarse = diffusion.respace_to(targets.grid(n))
    assert float(coarse.alphas_cumprod_prev[0]) == 1.0  # the last step goes to x_0
    by_teacher = ddim_sample(teacher, fine, x_T, indices=range(2 * n - 1, -1, -1), clip_denoised=False)
    by_student = distilled_sample(student, coarse, x_T, indices=range(n - 1, -1, -1), clip_denoised=False)
    assert (by_student - by_teacher).abs().max() <= 1e-9 * by_teacher.abs().max()
    # Half the teacher's steps alone are far off (the comparison has teeth).
    by_half = ddim_sample(teacher, coarse, x_T, indices=range(n - 1, -1, -1), clip_denoised=False)
    assert (by_half - by_teacher).abs().max() > 1e-2


class IdealStudent:
    """The exact stage-two student for ``teacher`` at one guidance scale, through the real samplers.

    For each row it runs the teacher's two DDIM steps (``ddim_sample`` on grid(2n), unclipped) from x_t and
    returns the eps whose single DDIM step on grid(n) lands there (solved in eps space, not by the x-space
    formula under test), with the teacher's variance channels at t.
    """

    def __init__(self, teacher: torch.nn.Module, diffusion: GaussianDiffusion, n: int, w: float) -> None:
        self.teacher, self.diffusion, self.n, self.w = teacher, diffusion, n, w
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, segmap: torch.Tensor, guidance_scale: torch.Tensor
                 ) -> torch.Tensor:
        self.calls += 1
        assert torch.allclose(guidance_scale, torch.full_like(guidance_scale, self.w))
        fine_grid, coarse_grid = targets.grid(2 * self.n), targets.grid(self.n)
        fine = self.diffusion.respace_to(fine_grid)
        rows = []
        for i in range(x_t.shape[0]):
            j = coarse_grid.index(int(t[i]))
            z, seg = x_t[i : i + 1].double(), segmap[i : i + 1]
            den = GuidedDenoiser(self.teacher, seg, self.w, use_spade_cache=False)
            with torch.no_grad():
                z_end = ddim_sample(lambda a, b, den=den: den(a.float(), b).double(), fine, z,
                                    indices=[2 * j + 1, 2 * j], clip_denoised=False)
                var = den(z.float(), t[i : i + 1])[:, 3:].double()
            abar_t = float(self.diffusion.alphas_cumprod[int(t[i])])
            abar_s = float(self.diffusion.alphas_cumprod[coarse_grid[j - 1]]) if j else 1.0
            coef = math.sqrt(1 - abar_s) - math.sqrt(abar_s) * math.sqrt(1 - abar_t) / math.sqrt(abar_t)
            eps = (z_end - math.sqrt(abar_s / abar_t) * z) / coef
            rows.append(torch.cat([eps, var], dim=1))
        return torch.cat(rows).float()


def test_halving_objective_is_zero_for_the_ideal_student() -> None:
    """The objective's wiring (grids, teacher passes, x_tilde, SNR weight, variance term) on a real U-Net teacher:
    the exact student's loss is ~0, the teacher standing in for the student is far from it."""
    cfg = tiny_teacher_config()
    teacher = embedded_model(cfg, seed=3)
    diffusion = GaussianDiffusion(cfg.diffusion, cfg.model.learn_sigma)
    n, w = 4, 1.5
    objective = Objective("halve", teacher, diffusion, [w, w], teacher_steps=2 * n)
    g = torch.Generator().manual_seed(0)
    x_start = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.tensor([0, 300, 620, 999])  # grid indices 0, 1, 2, 3
    segmap = segmaps(cfg, 4, seed=1)
    ideal = IdealStudent(teacher, diffusion, n, w)
    exact = objective(ideal, x_start, t, segmap, noise)
    assert ideal.calls == 1 and set(exact) == {"loss", "mse", "vb"} and exact["loss"].shape == (4,)
    assert torch.equal(exact["vb"], torch.zeros(4))

    def as_student(x_t, t_, seg, guidance_scale):
        return teacher(x_t, t_, seg, guidance_scale=guidance_scale)

    naive = objective(as_student, x_start, t, segmap, noise)
    assert (naive["mse"] > 1e-3).all(), naive
    assert (exact["loss"] <= 1e-6 * naive["loss"] + 1e-9).all(), (exact, naive)


def test_objective_refuses_impossible_stages() -> None:
    cfg = tiny_teacher_config()
    diffusion = GaussianDiffusion(cfg.diffusion, cfg.model.learn_sigma)
    student = embedded_model(cfg)
    with pytest.raises(DistillSetupError, match=r"distill.teacher_steps=3"):
        Objective("halve", student, diffusion, [1.0, 2.0], teacher_steps=3)
    with pytest.raises(DistillSetupError, match="has no guidance embedding"):
        Objective("halve", tiny_teacher(cfg), diffusion, [1.0, 2.0], teacher_steps=4)
    with pytest.raises(DistillSetupError, match="distill.stage='nope'"):
        Objective("nope", student, diffusion, [1.0, 2.0])
