"""Conditioning: one-hot, instance edges, segmap assembly, null condition and drop mask on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from sdm.conditioning import (
    LabelRangeError,
    apply_drop,
    drop_mask,
    instance_edges,
    make_segmap,
    null_segmap_like,
    one_hot,
)
from sdm.config.schema import ModelConfig


def test_one_hot_hand_made() -> None:
    label = torch.tensor([[[0, 2], [1, 2]]])
    out = one_hot(label, 3)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [1, 0]], [[0, 1], [0, 1]]], dtype=torch.float32)
    assert torch.equal(out[0], expected)


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_one_hot_rejects_out_of_range(bad: int) -> None:
    label = torch.tensor([[[0, 1], [2, bad]]])
    with pytest.raises(LabelRangeError) as e:
        one_hot(label, 3)
    assert str(bad) in str(e.value) and "0..2" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_one_hot_rejects_float_and_wrong_rank() -> None:
    with pytest.raises(ValueError, match="integers"):
        one_hot(torch.zeros(1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        one_hot(torch.zeros(2, 2, dtype=torch.long), 3)


def test_instance_edges_hand_made() -> None:
    inst = torch.tensor([[
        [1, 1, 1, 1],
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [1, 1, 1, 1],
    ]])
    expected = torch.tensor([[
        [0, 0, 1, 1],
        [0, 1, 1, 1],
        [0, 1, 1, 1],
        [0, 0, 1, 1],
    ]], dtype=torch.float32)
    out = instance_edges(inst)
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out[:, 0], expected)


def test_instance_edges_uniform_map_has_none() -> None:
    assert instance_edges(torch.full((2, 5, 3), 7)).sum() == 0


def test_make_segmap_with_and_without_instances() -> None:
    label = torch.tensor([[[0, 0], [1, 1]]])
    inst = torch.tensor([[[5, 6], [5, 5]]])
    cfg = ModelConfig(num_classes=2, use_instance=True)
    seg = make_segmap(label, inst, cfg)
    assert seg.shape == (1, cfg.cond_channels, 2, 2) == (1, 3, 2, 2)
    assert torch.equal(seg[:, :2], one_hot(label, 2))
    assert torch.equal(seg[0, 2], torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    # No instance map: edges of the label map itself.
    seg_label = make_segmap(label, None, cfg)
    assert torch.equal(seg_label[0, 2], torch.ones(2, 2))
    # use_instance off: the instance map is not part of the input.
    seg_plain = make_segmap(label, inst, ModelConfig(num_classes=2, use_instance=False))
    assert seg_plain.shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="instance map shape"):
        make_segmap(label, torch.zeros(1, 3, 2, dtype=torch.long), cfg)
    with pytest.raises(LabelRangeError, match="label value 2"):
        make_segmap(label + 1, None, cfg)


def test_null_segmap_and_drop() -> None:
    seg = torch.rand(4, 3, 2, 2) + 0.1
    assert torch.equal(null_segmap_like(seg), torch.zeros_like(seg))
    mask = torch.tensor([True, False, False, True])
    dropped = apply_drop(seg, mask)
    assert torch.equal(dropped[1:3], seg[1:3])
    assert dropped[0].abs().sum() == 0 and dropped[3].abs().sum() == 0
    assert seg.min() > 0  # the input is not modified in place
    with pytest.raises(ValueError, match="drop mask"):
        apply_drop(seg, torch.tensor([True]))


def test_drop_mask_rate_and_determinism() -> None:
    assert not drop_mask(100, 0.0).any()
    assert drop_mask(100, 1.0).all()
    a = drop_mask(10_000, 0.2, torch.Generator().manual_seed(3))
    b = drop_mask(10_000, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.bool and a.shape == (10_000,)
    assert 0.18 < a.float().mean().item() < 0.22
    with pytest.raises(ValueError, match="drop_rate"):
        drop_mask(3, 1.5)
