"""sample.precision: fp32 stays exact, bf16 autocast is a bounded change of the images, auto follows the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _model_helpers import blocky_labels

from sdm.compiled import resolve_setting
from sdm.config.schema import Config
from sdm.model import SDMUNet
from sdm.precision import autocast_context, bf16_native, resolve_precision
from sdm.sampling import generate

KW = dict(guidance_scale=1.5, sampler="ddim", steps=2, seed=11, eta=0.0, batch_size=2)


def test_resolve_precision_follows_the_device() -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_native("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    # fp32 is the exact path: no autocast at all.
    with autocast_context("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    assert resolve_setting("auto", "compile", "cpu") is False
    assert resolve_setting("true", "compile", "cpu") is True
    with pytest.raises(ValueError, match="sample.compile"):
        resolve_setting("yes", "compile", "cpu")


def test_bf16_samples_stay_close_to_fp32_from_the_same_seeds(toy: Config, toy_model: SDMUNet) -> None:
    """The quality guard on a small batch: same seeds, bf16 vs fp32, mean absolute pixel difference (0-255)."""
    labels = blocky_labels(toy, 2, 8, 5)
    fp32_stats: dict = {}
    fp32 = generate(toy_model, toy, labels, precision="fp32", stats=fp32_stats, **KW)
    again = generate(toy_model, toy, labels, **KW)  # the default is the exact fp32 path
    np.testing.assert_array_equal(fp32, again)
    bf16_stats: dict = {}
    bf16 = generate(toy_model, toy, labels, precision="bf16", stats=bf16_stats, **KW)
    assert bf16_stats["precision"] == "bf16"
    # The SPADE cache is stored in the sampling precision: half of fp32's bytes.
    assert bf16_stats["largest_cache_nbytes"] * 2 == fp32_stats["largest_cache_nbytes"]
    diff = np.abs(bf16.astype(float) - fp32.astype(float))
    assert 0 < diff.mean() < 4.0, f"bf16 vs fp32 mean abs pixel difference {diff.mean():.2f} / 255"
    # Not a different picture: the two agree far better than two seeds do.
    other_seed = generate(toy_model, toy, labels, **{**KW, "seed": 12})
    assert diff.mean() < 0.25 * np.abs(other_seed.astype(float) - fp32.astype(float)).mean()


def test_channels_last_gives_the_same_images_and_restores_the_layout(toy: Config, toy_model: SDMUNet) -> None:
    labels = blocky_labels(toy, 2, 8, 5)
    fp32 = generate(toy_model, toy, labels, **KW)
    cl = generate(toy_model, toy, labels, channels_last="true", **KW)
    assert np.abs(cl.astype(int) - fp32.astype(int)).max() <= 1  # a different conv kernel, same maths
    weight = toy_model.input_blocks[0][0].weight
    assert weight.is_contiguous()  # back to the exact path's layout
