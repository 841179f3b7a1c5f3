"""The ``distilled`` and ``renoise`` samplers and a student checkpoint through generate, ``sdm sample``,
evaluation settings and the served model's options: its own sampler and steps with no extra flags, one network
pass per step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from _distill_helpers import CLASSES, SIZE, embedded_model, save_teacher, segmaps, tiny_teacher, tiny_teacher_config
from _train_helpers import one_thread
from PIL import Image
from typer.testing import CliRunner

from sdm.config.schema import DistillConfig
from sdm.diffusion import GaussianDiffusion, GuidedDenoiser, sample_loop
from sdm.diffusion.samplers import ddim_sample
from sdm.distill.student import init_student_checkpoint, student_config
from sdm.distill.targets import grid
from sdm.errors import InputError
from sdm.model import load_checkpoint
from sdm.sampling import generate

single_thread = pytest.fixture(autouse=True)(one_thread)


class Recorder:
    """A U-Net seen through what samplers ask of it; records every forward (rows, label-map rows, t, scale)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.shares_encoder = True
        self.guidance_embedded = bool(getattr(model, "guidance_embedded", False))
        self.calls: list[dict[str, Any]] = []
        self.outputs: list[torch.Tensor] = []

    def spade_cache(self, segmap: torch.Tensor) -> Any:
        return self.model.spade_cache(segmap)

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, segmap: Any, spade_cache: Any = None,
                 **guidance: Any) -> torch.Tensor:
        rows = spade_cache.segmap_shape[0] if spade_cache is not None else segmap.shape[0]
        self.calls.append({"n": x_t.shape[0], "rows": rows, "t": t.tolist(), **guidance})
        out = self.model(x_t, t, segmap, spade_cache=spade_cache, **guidance)
        self.outputs.append(out)
        return out


@pytest.fixture(scope="module")
def cfg() -> Any:
    return tiny_teacher_config()


@pytest.fixture(scope="module")
def diffusion(cfg: Any) -> GaussianDiffusion:
    return GaussianDiffusion(cfg.diffusion, cfg.model.learn_sigma)


def test_distilled_is_ddim_on_the_grid_with_one_pass_per_step(cfg: Any, diffusion: GaussianDiffusion) -> None:
    student = embedded_model(cfg, seed=1)
    seg = segmaps(cfg, 2, seed=0)
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    rec = Recorder(student)
    out = sample_loop(rec, diffusion, seg, sampler="distilled", steps=4, guidance_scale=1.5, noise=x_T)
    # K forwards, each of the N rows alone (no null branch), at grid(4)'s original timesteps, the scale as input.
    assert [c["t"] for c in rec.calls] == [[t, t] for t in reversed(grid(4))] == [[999] * 2, [749] * 2,
                                                                                   [499] * 2, [249] * 2]
    assert all(c["n"] == 2 and c["rows"] == 2 and c["guidance_scale"] == 1.5 for c in rec.calls)
    with torch.no_grad():
        den = GuidedDenoiser(student, seg, 1.5)
        reference = ddim_sample(den, diffusion.respace_to(grid(4)), x_T, indices=[3, 2, 1, 0], eta=0.0)
    assert torch.allclose(out, reference, atol=1e-6)
    # The last step lands on x_0: the result is the (clipped) x prediction of the last forward, at t = 249.
    abar = float(diffusion.alphas_cumprod[249])
    x_last = _x_before_last(student, seg, x_T, diffusion)
    eps = rec.outputs[-1][:, :3]
    assert torch.allclose(out, ((x_last - (1 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1, 1), atol=1e-5)
    # Other scales give other images: the scale reaches the network.
    assert (sample_loop(student, diffusion, seg, sampler="distilled", steps=4, guidance_scale=2.0, noise=x_T)
            - out).abs().max() > 1e-4


def test_distilled_eta_draws_fresh_noise_each_step_reproducibly(cfg: Any, diffusion: GaussianDiffusion) -> None:
    student = embedded_model(cfg, seed=1)
    seg = segmaps(cfg, 2, seed=0)
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    process = diffusion.respace_to(grid(4))
    with torch.no_grad():
        den = GuidedDenoiser(student, seg, 1.5)
        deterministic = ddim_sample(den, process, x_T, indices=[3, 2, 1, 0], eta=0.0)
        g = torch.Generator().manual_seed(7)
        noisy = ddim_sample(den, process, x_T, indices=[3, 2, 1, 0], eta=1.0,
                            draw_noise=lambda: torch.randn(x_T.shape, generator=g))

    def run(eta: float, seed: int, model: Any = student) -> torch.Tensor:
        return sample_loop(model, diffusion, seg, sampler="distilled", steps=4, guidance_scale=1.5, eta=eta,
                           noise=x_T, generator=torch.Generator().manual_seed(seed))

    # eta 0 (the default): today's deterministic DDIM bit for bit, whatever the generator.
    assert torch.equal(run(0.0, 7), deterministic) and torch.equal(run(0.0, 8), deterministic)
    # eta > 0: DDIM's noise from the sampling generator after each step but the last, still one pass per step.
    rec = Recorder(student)
    out = run(1.0, 7, rec)
    assert [c["t"] for c in rec.calls] == [[t, t] for t in reversed(grid(4))]
    assert torch.allclose(out, noisy, atol=1e-6) and (out - deterministic).abs().max() > 1e-3
    assert torch.equal(run(1.0, 7), out) and (run(1.0, 8) - out).abs().max() > 1e-3
    assert (run(0.5, 7) - out).abs().max() > 1e-4


def _x_before_last(student: torch.nn.Module, seg: torch.Tensor, x_T: torch.Tensor,
                   diffusion: GaussianDiffusion) -> torch.Tensor:
    """x_t fed to the last forward: the same sampling stopped one step early (3 steps of the 4-step grid)."""
    process = diffusion.respace_to(grid(4))
    with torch.no_grad():
        den = GuidedDenoiser(student, seg, 1.5)
        x = x_T
        for i in (3, 2, 1):
            x = ddim_sample(den, process, x, indices=[i], eta=0.0)
    return x


def test_renoise_noises_the_x_start_prediction_afresh_each_step(cfg: Any, diffusion: GaussianDiffusion) -> None:
    student = embedded_model(cfg, seed=1)
    seg = segmaps(cfg, 2, seed=0)
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def run(seed: int, model: Any = student, sampler: str = "renoise") -> torch.Tensor:
        return sample_loop(model, diffusion, seg, sampler=sampler, steps=4, guidance_scale=1.5, eta=1.0, noise=x_T,
                           generator=torch.Generator().manual_seed(seed))

    rec = Recorder(student)
    out = run(7, rec)
    # A student: one pass per step, on its grid(4), the scale as input.
    assert [c["t"] for c in rec.calls] == [[t, t] for t in reversed(grid(4))]
    assert all(c["n"] == 2 and c["rows"] == 2 and c["guidance_scale"] == 1.5 for c in rec.calls)
    # By hand, from the forwards' outputs and the training process's abar: x_0 from eps (clipped), then
    # x = sqrt(abar_next) x_0 + sqrt(1 - abar_next) z with z from the sampling generator; the last x_0 is the image.
    g = torch.Generator().manual_seed(7)
    abar = diffusion.alphas_cumprod.double()
    timesteps = list(reversed(grid(4)))
    x = x_T.double()
    for n, (t, output) in enumerate(zip(timesteps, rec.outputs, strict=True)):
        a = float(abar[t])
        x_start = ((x - (1 - a) ** 0.5 * output[:, :3].double()) / a**0.5).clamp(-1, 1)
        if n == len(timesteps) - 1:
            break
        a_next = float(abar[timesteps[n + 1]])
        x = a_next**0.5 * x_start + (1 - a_next) ** 0.5 * torch.randn(x_T.shape, generator=g).double()
    assert torch.allclose(out.double(), x_start, atol=1e-5)
    # Reproducible from the seed; another seed, or DDIM with eta 1 on the same noise, gives other images.
    assert torch.equal(run(7), out) and (run(8) - out).abs().max() > 1e-3
    assert (run(7, sampler="distilled") - out).abs().max() > 1e-3
    # Any model: a plain one runs it guided (2N rows) on the evenly respaced process, as the other samplers.
    plain = Recorder(tiny_teacher(cfg))
    run(7, plain)
    assert [c["t"][0] for c in plain.calls] == diffusion.respace(4).timestep_map.tolist()[::-1]
    assert all(c["rows"] == 4 for c in plain.calls)


def test_a_student_runs_any_sampler_in_one_pass_per_step(cfg: Any, diffusion: GaussianDiffusion) -> None:
    rec = Recorder(embedded_model(cfg, seed=2))
    sample_loop(rec, diffusion, segmaps(cfg, 3, seed=1), sampler="dpmpp", steps=5, guidance_scale=1.7,
                generator=torch.Generator().manual_seed(0))
    assert len(rec.calls) == 5 and all(c["rows"] == 3 and c["guidance_scale"] == 1.7 for c in rec.calls)
    # A plain model keeps its two branches (2N label-map rows) and is never handed a scale.
    plain = Recorder(tiny_teacher(cfg))
    sample_loop(plain, diffusion, segmaps(cfg, 3, seed=1), sampler="dpmpp", steps=2, guidance_scale=1.7)
    assert all(c["rows"] == 6 and "guidance_scale" not in c for c in plain.calls)


def test_distilled_sampler_and_scale_range_refusals(cfg: Any, diffusion: GaussianDiffusion, tmp_path: Path) -> None:
    seg = segmaps(cfg, 1, seed=0)
    with pytest.raises(InputError, match=r"sampler 'distilled' needs a guidance-distilled student "
                                         r"\(model.guidance_embed true"):
        sample_loop(tiny_teacher(cfg), diffusion, seg, sampler="distilled", steps=4)
    labels = np.zeros((1, SIZE, SIZE), dtype=np.int64)
    with pytest.raises(InputError, match="this checkpoint has model.guidance_embed false"):
        generate(tiny_teacher(cfg), cfg, labels, guidance_scale=1.5, sampler="distilled", steps=4, seed=0)
    scfg = student_config(cfg, DistillConfig(guidance_range=[1.0, 2.0]))
    student = embedded_model(cfg)
    for sampler in ("distilled", "ddim"):
        with pytest.raises(InputError, match=r"guidance scale 3 is outside .*distill.guidance_range \[1, 2\]"):
            generate(student, scfg, labels, guidance_scale=3.0, sampler=sampler, steps=4, seed=0)
    # The served student refuses it before sampling, from its request limits.
    from sdm.registry.pyfunc_io import ModelInputError, RequestLimits, sampling_options

    limits = RequestLimits.from_serving(scfg.register.serving)
    assert sampling_options(None, scfg.sample, limits) == {"guidance_scale": 1.5, "sampler": "renoise",
                                                           "steps": 8, "seed": 0, "eta": 1.0}
    assert sampling_options({"sampler": "distilled", "eta": 0.0}, scfg.sample, limits)["eta"] == 0.0
    with pytest.raises(ModelInputError, match=r"param eta=1.5 must be in \[0, 1\]"):
        sampling_options({"eta": 1.5}, scfg.sample, limits)
    with pytest.raises(ModelInputError, match=r"guidance_scale=3.0 is outside this model's range \[1.0, 2.0\]"):
        sampling_options({"guidance_scale": 3.0}, scfg.sample, limits)
    with pytest.raises(ModelInputError, match="sampler='distilled' is not allowed"):
        sampling_options({"sampler": "distilled"}, cfg.sample, RequestLimits.from_serving(cfg.register.serving))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, cfg: Any) -> Path:
    root = tmp_path_factory.mktemp("distilled")
    teacher_dir = save_teacher(root / "teacher", cfg)
    scfg = student_config(cfg, DistillConfig(steps=4, start_steps=16))
    init = init_student_checkpoint(teacher_dir, root / "init", scfg, {"teacher": str(teacher_dir)})
    # A trained student's embedding is not zero: make the scale matter, as after stage one.
    from safetensors.torch import load_file

    from sdm.model import save_checkpoint

    state = load_file(str(init / "model.safetensors"))
    state["guidance_embed.2.weight"] = torch.randn_like(state["guidance_embed.2.weight"]) * 0.05
    return save_checkpoint(root / "student", state, scfg, ema_state=state, meta={"step": 1})


def test_student_checkpoint_generates_with_its_own_sampler(student_dir: Path) -> None:
    model, scfg = load_checkpoint(student_dir)
    rec = Recorder(model)
    labels = np.zeros((2, SIZE, SIZE), dtype=np.int64)
    s = scfg.sample
    images = generate(rec, scfg, labels, guidance_scale=s.guidance_scale, sampler=s.sampler, steps=s.steps,
                      seed=3)
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert (s.sampler, s.steps) == ("renoise", 4) and len(rec.calls) == 4
    assert [c["t"][0] for c in rec.calls] == list(reversed(grid(4)))


def _write_labels(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        label = rng.integers(0, CLASSES, (SIZE // 4, SIZE // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
        Image.fromarray(label, mode="L").save(folder / f"scene_{i}.png")
    return folder


def _sample_cli(*args: str | Path) -> Any:
    from sdm.cli import app

    return CliRunner().invoke(app, ["sample", *map(str, args), "--params", "/nonexistent/params.yaml",
                                    "--no-progress", "--device", "cpu"])


def test_sdm_sample_uses_the_students_sampler_unless_told(student_dir: Path, tmp_path: Path) -> None:
    labels = _write_labels(tmp_path / "labels")
    result = _sample_cli("--checkpoint", student_dir, "--labels", labels, "--out", tmp_path / "own")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "own" / "config.yaml").read_text())["sample"]
    assert (written["sampler"], written["steps"]) == ("renoise", 4)
    assert "(renoise, 4 steps, guidance 1.5" in result.output
    # Explicit flags still win; the student runs the other sampler in one pass per step.
    result = _sample_cli("--checkpoint", student_dir, "--labels", labels, "--out", tmp_path / "ddim",
                         "--sampler", "ddim", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert "(ddim, 3 steps" in result.output
    result = _sample_cli("--checkpoint", student_dir, "--labels", labels, "--out", tmp_path / "s",
                         "--set", "sample.steps=2")
    assert result.exit_code == 0 and "(renoise, 2 steps" in result.output, result.output
    bad = _sample_cli("--checkpoint", student_dir, "--labels", labels, "--out", tmp_path / "bad", "--guidance", "5")
    assert bad.exit_code == 2 and "distill.guidance_range [1, 2]" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()


def test_sdm_sample_passes_eta_to_the_distilled_sampler(student_dir: Path, tmp_path: Path) -> None:
    labels = _write_labels(tmp_path / "labels")
    # A student distilled before `renoise` existed: its own sampler is `distilled` with its own eta (1).
    older = tmp_path / "older"
    shutil.copytree(student_dir, older)
    config = json.loads((older / "config.json").read_text())
    config["sample"]["sampler"] = "distilled"
    (older / "config.json").write_text(json.dumps(config))
    images, etas = {}, {}
    # The student's own eta unless the user sets one; --eta 1 is the same, reproducibly.
    for name, extra in (("own", ()), ("eta0", ("--set", "sample.eta=0")), ("eta1", ("--eta", "1"))):
        result = _sample_cli("--checkpoint", older, "--labels", labels, "--out", tmp_path / name, *extra)
        assert result.exit_code == 0 and "(distilled, 4 steps" in result.output, result.output
        images[name] = {p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / name).glob("scene_*.png"))}
        etas[name] = yaml.safe_load((tmp_path / name / "config.yaml").read_text())["sample"]["eta"]
    assert etas == {"own": 1.0, "eta0": 0.0, "eta1": 1.0}
    assert len(images["own"]) == 2 and images["eta0"].keys() == images["own"].keys() == images["eta1"].keys()
    # eta 1 draws noise (other images than eta 0's), from the seed (the same images twice).
    assert any((images["own"][k] != images["eta0"][k]).any() for k in images["own"])
    assert all((images["eta1"][k] == images["own"][k]).all() for k in images["own"])


def test_sdm_sample_refuses_distilled_on_a_plain_checkpoint(cfg: Any, tmp_path: Path) -> None:
    teacher_dir = save_teacher(tmp_path / "teacher", cfg)
    labels = _write_labels(tmp_path / "labels")
    result = _sample_cli("--checkpoint", teacher_dir, "--labels", labels, "--out", tmp_path / "out",
                         "--sampler", "distilled", "--steps", "4")
    assert result.exit_code == 2 and "model.guidance_embed false" in result.output, result.output


def test_evaluation_of_a_student_uses_its_own_pair_first(cfg: Any) -> None:
    from sdm.eval.runner import EvalRequest, _check_sampling, _student_settings

    scfg = student_config(cfg, DistillConfig(steps=8))
    req = EvalRequest(checkpoint=Path("x"), data=Path("d"), out=Path("o"))
    pairs = [("ddpm", 1000), ("renoise", 8), ("dpmpp-sde", 25)]
    run_cfg, swept = _student_settings(cfg, scfg, pairs, req)
    assert (run_cfg.evaluate.sampler, run_cfg.evaluate.steps, run_cfg.evaluate.eta) == ("renoise", 8, 1.0)
    assert swept == [("renoise", 8), ("ddpm", 1000), ("dpmpp-sde", 25)]
    given = EvalRequest(checkpoint=Path("x"), data=Path("d"), out=Path("o"), sampling_given=("sampler",))
    # A sampler the user named keeps the run's eta (evaluate.eta, 0 here), not the student's.
    assert (_student_settings(cfg, scfg, [], given)[0].evaluate.sampler,
            _student_settings(cfg, scfg, [], given)[0].evaluate.eta) == (cfg.evaluate.sampler, 0.0)
    assert _student_settings(cfg, cfg, pairs, req) == (cfg, pairs)  # a plain checkpoint: unchanged
    with pytest.raises(InputError, match="model.guidance_embed false"):
        _check_sampling(cfg, cfg, [1.5], [("distilled", 8)])
    with pytest.raises(InputError, match="distill.guidance_range"):
        _check_sampling(scfg, run_cfg, [1.0, 4.0], [])
