"""sample.cache_budget_gb: past the budget generate samples in chunks (or uncached), with the same images."""

from __future__ import annotations

import numpy as np
import pytest
from _model_helpers import blocky_labels

from sdm.config.schema import Config
from sdm.model import SDMUNet
from sdm.sampling import generate
from sdm.spade_budget import BYTES_PER_GB, cache_bytes_per_label_map, plan_cache

KW = dict(guidance_scale=1.5, sampler="ddim", steps=3, seed=4, eta=1.0)


def test_cache_size_per_label_map_matches_the_built_cache(toy: Config, toy_model: SDMUNet) -> None:
    labels = blocky_labels(toy, 1, 4, 3)
    stats: dict = {}
    generate(toy_model, toy, labels, batch_size=1, stats=stats, **KW)
    # With guidance the cache holds [cond; null]: two rows of every norm's (1 + gamma, beta), fp32.
    assert stats["cache_bytes_per_label_map"] == stats["largest_cache_nbytes"] > 0
    assert stats["largest_cache_nbytes"] == cache_bytes_per_label_map(toy_model, toy.model.image_size, 4, True)
    assert cache_bytes_per_label_map(toy_model, toy.model.image_size, 2, False) * 4 == stats["largest_cache_nbytes"]


def test_a_tiny_budget_samples_in_chunks_with_identical_images(toy: Config, toy_model: SDMUNet) -> None:
    labels = blocky_labels(toy, 5, 4, 3)
    unbounded: dict = {}
    reference = generate(toy_model, toy, labels, batch_size=5, stats=unbounded, **KW)
    per_map = unbounded["cache_bytes_per_label_map"]
    assert unbounded["chunk"] == 5 and unbounded["largest_cache_nbytes"] == 5 * per_map
    budget_gb = 2.5 * per_map / BYTES_PER_GB  # room for two label maps' caches, not three
    bounded: dict = {}
    images = generate(toy_model, toy, labels, batch_size=5, cache_budget_gb=budget_gb, stats=bounded, **KW)
    assert bounded["chunk"] == 2 and bounded["use_spade_cache"]
    assert bounded["largest_cache_nbytes"] <= budget_gb * BYTES_PER_GB
    # Chunks of 2 run the convs on smaller batches: on AVX2 CPUs that rounds alike (equal images); AVX-512
    # oneDNN kernels block by batch size and round differently, so a few values may move by one uint8 step
    # (measured on Sapphire Rapids: 1 value of 15360). A chunking error would change whole images.
    diff = np.abs(images.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_budget_under_one_label_map_samples_uncached(toy: Config, toy_model: SDMUNet) -> None:
    labels = blocky_labels(toy, 2, 4, 3)
    reference = generate(toy_model, toy, labels, batch_size=2, **KW)
    stats: dict = {}
    images = generate(toy_model, toy, labels, batch_size=2, cache_budget_gb=1e-9, stats=stats, **KW)
    assert not stats["use_spade_cache"] and stats["largest_cache_nbytes"] == 0
    # The uncached SPADE convs give the same images up to float rounding (a uint8 step at most).
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1


def test_plan_cache_bounds() -> None:
    assert plan_cache(8, 1000, 0.0).chunk == 8  # 0 = unbounded
    assert plan_cache(8, 1000, 3500 / BYTES_PER_GB).chunk == 3
    assert plan_cache(2, 1000, 1.0).chunk == 2
    over = plan_cache(8, 1000, 500 / BYTES_PER_GB)
    assert not over.use_cache and "uncached" in over.describe()
    assert plan_cache(8, None, 1.0).use_cache  # a model without SPADE norms: nothing to bound
    with pytest.raises(ValueError, match="cache_budget_gb"):
        plan_cache(8, 1000, -1.0)
