"""train.precision: ``auto`` is bf16 autocast exactly where the device runs bf16 natively; fp32 is no autocast."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import one_thread

import sdm.precision
from sdm.conditioning import make_segmap
from sdm.config import resolve
from sdm.diffusion.gaussian import GaussianDiffusion
from sdm.model import SDMUNet
from sdm.train.loop import autocast_context

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The dtype a matmul computes in under the training loop's context (None: no autocast)."""
    with autocast_context(precision, torch.device(device)):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    return out.dtype if out.dtype != torch.float32 else None


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_native_bf16_on_cpu(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(sdm.precision, "cpu_bf16_native", lambda: native)
    assert _autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
    # Explicit settings do not depend on the CPU: fp32 is the exact path, bf16 is asked for.
    assert _autocast_dtype("fp32", "cpu") is None
    assert _autocast_dtype("bf16", "cpu") == torch.bfloat16


def test_this_cpu_reports_what_lscpu_says() -> None:
    """auto on this machine: bf16 iff the kernel lists avx512_bf16 or amx_bf16 (or torch's probes say so)."""
    flags = sdm.precision._cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert sdm.precision.bf16_native("cpu")
    expected = torch.bfloat16 if sdm.precision.bf16_native("cpu") else None
    assert _autocast_dtype("auto", "cpu") == expected


def test_bf16_training_step_keeps_fp32_weights_and_finite_gradients() -> None:
    """Under bf16 autocast the hybrid loss is computed, the master weights and their gradients stay fp32."""
    cfg = resolve(preset="toy", params=None, overrides=[
        "model.image_size=[8,8]", "model.channel_mult=[1,2]", "model.attention_resolutions=[4]",
        "model.num_classes=4", "model.spade_hidden=8"])
    torch.manual_seed(0)
    model = SDMUNet(cfg.model)
    diffusion = GaussianDiffusion(cfg.diffusion, learn_sigma=cfg.model.learn_sigma)
    label = torch.randint(0, 4, (2, 8, 8))
    segmap = make_segmap(label, label, cfg.model)
    x_start = torch.rand(2, 3, 8, 8) * 2 - 1
    t = torch.tensor([10, 900])
    with autocast_context("bf16", torch.device("cpu")):
        losses = diffusion.training_losses(model, x_start, t, segmap)
    losses["loss"].mean().backward()
    assert torch.isfinite(losses["loss"]).all()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32), name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
