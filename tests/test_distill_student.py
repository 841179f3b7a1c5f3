"""The distilled student: its config, its initial checkpoint (== the teacher's conditional output at any w) and
stage one's objective (overfitting one batch, its single pass matches the teacher's guided output)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _distill_helpers import save_teacher, segmaps, tiny_teacher_config
from _train_helpers import one_thread

from sdm.conditioning import null_segmap_like
from sdm.config.schema import DistillConfig
from sdm.diffusion import classifier_free_guidance
from sdm.distill.objective import DistillSetupError, make_objective
from sdm.distill.student import init_student_checkpoint, student_config, student_sampling
from sdm.errors import InputError
from sdm.model import load_checkpoint, read_checkpoint_config, read_checkpoint_meta
from sdm.nn.unet import GuidanceScaleError

# Two torch threads on a busy 2-core machine can be 50x slower than one.
single_thread = pytest.fixture(autouse=True)(one_thread)


def test_student_config_names_its_own_sampler_and_range() -> None:
    teacher = tiny_teacher_config("sample.guidance_scale=3.0", "evaluate.guidance_scales=[1.0,1.5,4.0]",
                                  "register.model_name=scenes")
    cfg = student_config(teacher, DistillConfig(steps=4, start_steps=16, guidance_range=[1.0, 2.0]))
    assert cfg.model == replace(teacher.model, guidance_embed=True)
    assert (cfg.sample.sampler, cfg.sample.steps, cfg.sample.guidance_scale, cfg.sample.eta) == ("renoise", 4, 2.0, 1.0)
    assert (cfg.evaluate.sampler, cfg.evaluate.steps, cfg.evaluate.guidance_scales) == ("renoise", 4, [1.0, 1.5])
    assert cfg.evaluate.steps_sweep[:2] == ["renoise:4", "distilled:4"]
    assert cfg.evaluate.steps_sweep[2:] == teacher.evaluate.steps_sweep
    serving = cfg.register.serving
    assert {"distilled", "renoise"} <= set(serving.samplers)
    assert set(teacher.register.serving.samplers) <= set(serving.samplers)
    assert (serving.min_guidance_scale, serving.max_guidance_scale) == (1.0, 2.0)
    assert cfg.register.model_name == "scenes-distilled" and cfg.distill.steps == 4
    assert student_config(teacher, DistillConfig(model_name="mine")).register.model_name == "mine"
    # The served model's defaults pass its own request limits.
    from sdm.registry.pyfunc_io import serving_model_config

    serving_model_config(cfg)
    with pytest.raises(InputError, match="already a distilled student"):
        student_config(cfg, DistillConfig())
    with pytest.raises(InputError, match=r"distill.start_steps=2048.*diffusion.steps"):
        student_config(teacher, DistillConfig(start_steps=2048))


def test_student_sampling_defaults_yield_to_what_the_user_gave() -> None:
    teacher = tiny_teacher_config()
    student = student_config(teacher, DistillConfig(steps=8))
    run = teacher.sample  # params.yaml's defaults: dpmpp-sde, 25
    assert (student_sampling(run, student, set()).sampler, student_sampling(run, student, set()).steps) == \
        ("renoise", 8)
    assert student_sampling(run, student, {"steps"}).steps == run.steps
    assert student_sampling(run, student, {"sampler"}).sampler == run.sampler
    assert student_sampling(run, teacher, set()) == run  # not a student: unchanged
    ev = student_sampling(teacher.evaluate, student, set())
    assert (ev.sampler, ev.steps) == ("renoise", 8)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "final", tiny_teacher_config())


def test_initial_student_is_the_teachers_conditional_output_at_any_scale(teacher_dir: Path, tmp_path: Path) -> None:
    teacher, teacher_cfg = load_checkpoint(teacher_dir)  # EMA weights
    cfg = student_config(teacher_cfg, DistillConfig())
    out = init_student_checkpoint(teacher_dir, tmp_path / "init", cfg, {"teacher": str(teacher_dir)})
    assert read_checkpoint_config(out) == cfg and read_checkpoint_meta(out) == {"teacher": str(teacher_dir)}
    student, _ = load_checkpoint(out)
    raw, _ = load_checkpoint(out, use_ema=False)
    assert student.guidance_embedded and not teacher.guidance_embedded
    for key, value in teacher.state_dict().items():  # the teacher's EMA weights, as model and as EMA
        assert torch.equal(student.state_dict()[key], value) and torch.equal(raw.state_dict()[key], value), key
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([10, 500, 999])
    seg = segmaps(teacher_cfg, 3, seed=0)
    with torch.no_grad():
        cond = teacher(x, t, seg)
        for w in (1.0, 1.7, torch.tensor([1.2, 2.0, 0.5])):
            assert torch.equal(student(x, t, seg, guidance_scale=w), cond)
        # Not a no-op: the embedding's first layer is live, so a perturbed last layer changes the output.
        student.guidance_embed[2].weight.add_(0.01)
        assert not torch.allclose(student(x, t, seg, guidance_scale=1.5), cond)
    with pytest.raises(GuidanceScaleError, match="needs guidance_scale"):
        student(x, t, seg)
    with pytest.raises(GuidanceScaleError, match=r"no guidance embedding \(model.guidance_embed is false\)"):
        teacher(x, t, seg, guidance_scale=1.5)
    # The same teacher and seed give the same student (the embedding's random layer is seeded).
    again = init_student_checkpoint(teacher_dir, tmp_path / "again", cfg, {})
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match=r"model section must be the teacher's"):
        init_student_checkpoint(teacher_dir, tmp_path / "bad", teacher_cfg, {})


def test_make_objective_is_none_for_training_and_refuses_bad_stages(teacher_dir: Path) -> None:
    teacher_cfg = read_checkpoint_config(teacher_dir)
    assert make_objective(teacher_cfg, torch.device("cpu")) is None
    plain = replace(teacher_cfg, distill=replace(teacher_cfg.distill, stage="guidance", teacher=str(teacher_dir)))
    with pytest.raises(DistillSetupError, match="model.guidance_embed false"):
        make_objective(plain, torch.device("cpu"))
    cfg = student_config(teacher_cfg, DistillConfig())
    with pytest.raises(DistillSetupError, match="distill.teacher is empty"):
        make_objective(replace(cfg, distill=replace(cfg.distill, stage="guidance")), torch.device("cpu"))
    other = replace(cfg, model=replace(cfg.model, num_classes=7),
                    distill=replace(cfg.distill, stage="guidance", teacher=str(teacher_dir)))
    with pytest.raises(DistillSetupError, match=r"model.num_classes=5 differs from the student's 7"):
        make_objective(other, torch.device("cpu"))


# A one-level 8x8 U-Net: a training step in ~30 ms on one core, so the overfit below takes seconds.
SMALL = ("model.channel_mult=[1]", "model.attention_resolutions=[]")


def test_stage_one_overfit_matches_the_guided_teacher_in_one_pass(tmp_path: Path) -> None:
    """Stage one's objective, a plain Adam loop on ONE batch: the student's single pass goes from the teacher's
    conditional output (step 0) to its guided output, at two scales and in how it changes with w."""
    teacher_cfg = tiny_teacher_config(*SMALL, size=8)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    cfg = student_config(teacher_cfg, DistillConfig(guidance_range=[1.0, 3.0]))
    init = init_student_checkpoint(teacher_dir, tmp_path / "init", cfg, {})
    run = replace(cfg, distill=replace(cfg.distill, stage="guidance", teacher=str(teacher_dir)))
    objective = make_objective(run, torch.device("cpu"))
    assert objective is not None and not any(p.requires_grad for p in objective.teacher.parameters())
    student, _ = load_checkpoint(init, use_ema=False)
    student.train()

    g = torch.Generator().manual_seed(0)
    n = 4
    x_start = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(n, 3, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    seg = segmaps(teacher_cfg, n, seed=2)
    x_t = objective.diffusion.q_sample(x_start, t, noise)
    with torch.no_grad():
        cond, null = objective.teacher(x_t, t, seg), objective.teacher(x_t, t, null_segmap_like(seg))

    def guided(w: float) -> torch.Tensor:
        return classifier_free_guidance(cond, null, w)

    def student_at(w: float) -> torch.Tensor:
        with torch.no_grad():
            return student(x_t, t, seg, guidance_scale=w)

    def gap(w: float) -> float:
        return float(((student_at(w) - guided(w)) ** 2).mean())

    before = {w: gap(w) for w in (1.5, 2.5)}
    assert torch.equal(student_at(2.5), cond)  # step 0: the conditional output at any w

    steps, lr = 200, 3e-3
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    torch.manual_seed(0)  # the objective draws w from the global RNG, as the loop seeds it
    for step in range(steps):
        loss = objective(student, x_start, t, seg, noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / steps)
        optimizer.step()
    student.eval()
    after = {w: gap(w) for w in (1.5, 2.5)}
    # Measured (2026-12-02, this test): before 2.3e-3 / 2.1e-2, after 1.7e-4 / 1.6e-4 (13x and 127x lower).
    assert after[1.5] < before[1.5] / 5 and after[2.5] < before[2.5] / 20, (before, after)
    # It learnt the dependence on w, not one average: the change from 1.5 to 2.5 is the teacher's.
    wanted = guided(2.5) - guided(1.5)
    learnt = student_at(2.5) - student_at(1.5)
    assert float(((learnt - wanted) ** 2).sum()) < 0.1 * float((wanted**2).sum())
