"""SDMUNet: output shapes, where SPADE sits, the SPADE cache, attention layout, bad sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdm.config.load import ConfigError
from sdm.config.schema import ModelConfig
from sdm.model import ImageSizeError, SDMUNet
from sdm.nn import spade
from sdm.nn.attention import AttentionBlock
from sdm.nn.resblock import ResBlock
from sdm.nn.spade import SPADEGroupNorm
from sdm.nn.spade_resblock import SPADEResBlock
from sdm.nn.unet import timestep_embedding

TINY = ModelConfig(image_size=[16, 16], num_classes=5, use_instance=True, model_channels=32, num_res_blocks=1,
                   channel_mult=[1.0, 2.0], attention_resolutions=[8], num_heads=2, spade_hidden=16)


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised output convs would hide most of the network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs(cfg: ModelConfig, n: int = 2, size: tuple[int, int] | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size or cfg.image_size
    x_t = torch.randn(n, 3, h, w, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    label = torch.randint(0, cfg.num_classes, (n, h, w), generator=g)
    segmap = torch.nn.functional.one_hot(label, cfg.num_classes).permute(0, 3, 1, 2).float()
    if cfg.use_instance:
        segmap = torch.cat([segmap, (torch.rand(n, 1, h, w, generator=g) > 0.7).float()], dim=1)
    return x_t, t, segmap


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        tiny(learn_sigma=False),
        tiny(resblock_updown=False, use_scale_shift_norm=False, use_instance=False),
        tiny(image_size=[32, 64], channel_mult=[1.0, 1.0, 2.0], attention_resolutions=[16, 32], num_head_channels=16),
        tiny(image_size=[16, 16], model_channels=64, channel_mult=[0.5, 1.0], attention_resolutions=[16, 8],
             num_res_blocks=2, num_heads_upsample=4),
    ],
    ids=["toy-ish", "no-learn-sigma", "no-updown-no-scale-shift", "non-square", "half-mult"],
)
def test_output_shape(cfg: ModelConfig) -> None:
    model = SDMUNet(cfg).eval()
    x_t, t, segmap = inputs(cfg)
    with torch.no_grad():
        out = model(x_t, t, segmap)
    assert out.shape == (2, 6 if cfg.learn_sigma else 3, *cfg.image_size)
    assert out.shape[1] == cfg.out_channels


def test_non_square_256x512_shape() -> None:
    cfg = tiny(image_size=[256, 512], channel_mult=[0.5, 1.0, 1.0, 2.0, 2.0], model_channels=64,
               attention_resolutions=[32], num_classes=3, spade_hidden=8)
    model = randomize(SDMUNet(cfg)).eval()
    x_t, t, segmap = inputs(cfg, n=1)
    with torch.no_grad():
        out = model(x_t, t, segmap)
    assert out.shape == (1, 6, 256, 512)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    # attention at feature size 32 along the longer side = 16x32 maps, ds 16: the last level only
    assert any(isinstance(m, AttentionBlock) for m in model.input_blocks[-1])


def test_zero_initialised_output_gives_zero() -> None:
    model = SDMUNet(TINY).eval()
    with torch.no_grad():
        assert model(*inputs(TINY)).abs().max() == 0


def test_spade_only_in_middle_and_decoder() -> None:
    model = SDMUNet(tiny(num_res_blocks=2))
    assert not any(isinstance(m, (SPADEGroupNorm, SPADEResBlock)) for m in model.input_blocks.modules())
    assert any(isinstance(m, ResBlock) for m in model.input_blocks.modules())
    decoder_blocks = [m for part in (model.middle_block, model.output_blocks) for m in part.modules()
                      if isinstance(m, (ResBlock, SPADEResBlock))]
    assert decoder_blocks and all(isinstance(m, SPADEResBlock) for m in decoder_blocks)
    for block in decoder_blocks:
        assert isinstance(block.in_norm, SPADEGroupNorm) and isinstance(block.out_norm, SPADEGroupNorm)
        assert not any(isinstance(m, torch.nn.GroupNorm) and m.affine for m in block.modules())
        assert block.in_norm.norm.num_groups == 32 and not block.in_norm.norm.affine
        assert block.in_norm.mlp_shared[0].out_channels == 16  # model.spade_hidden
    # The encoder ignores the label map: changing it changes nothing before the middle block.
    model = randomize(model).eval()
    x_t, t, segmap = inputs(model.config)
    feats = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: feats.setdefault(i, []).append(o))
             for i, b in enumerate(model.input_blocks)]
    with torch.no_grad():
        out_a = model(x_t, t, segmap)
        out_b = model(x_t, t, torch.roll(segmap, 1, dims=1))
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in feats.values())
    assert not torch.allclose(out_a, out_b)


@pytest.mark.parametrize(
    ("cfg", "storage"),
    [(TINY, "per-row"), (TINY, "broadcast-runs"), (TINY, "gather"),
     (tiny(resblock_updown=False, use_scale_shift_norm=False), "per-row"),
     (tiny(image_size=[16, 32], channel_mult=[1.0, 1.0, 2.0]), "broadcast-runs")],
    ids=["per-row", "broadcast-runs", "gather", "plain-resample", "non-square"],
)
def test_cached_equals_uncached(cfg: ModelConfig, storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if storage != "per-row":
        monkeypatch.setattr(spade, "FULL_ROWS_MAX_BYTES", 0)
    if storage == "gather":
        monkeypatch.setattr(spade, "_MAX_RUNS", 0)
    model = randomize(SDMUNet(cfg)).eval()
    x_t, t, segmap = inputs(cfg, n=3)
    # A classifier-free guidance batch: conditional rows then null rows (identical: computed once).
    x_t, t = torch.cat([x_t, x_t]), torch.cat([t, t])
    segmap = torch.cat([segmap, torch.zeros_like(segmap)])
    with torch.no_grad():
        plain = model(x_t, t, segmap)
        cache = model.spade_cache(segmap)
        cached = model(x_t, t, segmap, spade_cache=cache)
        cached_again = model(x_t, (t + 100) % 1000, segmap, spade_cache=cache)
        plain_again = model(x_t, (t + 100) % 1000, segmap)
    if storage == "per-row":
        assert cache.rows is None and len(cache.scales[0]) == 6
    else:
        assert cache.rows.tolist() == [0, 1, 2, 3, 3, 3] and len(cache.scales[0]) == 4  # 3 label maps + null
        assert (cache.runs is None) == (storage == "gather")
    assert plain.abs().max() > 0.1
    assert (plain - cached).abs().max() <= 1e-5
    assert (plain_again - cached_again).abs().max() <= 1e-5
    levels = len(cfg.channel_mult)
    blocks = 2 + levels * (cfg.num_res_blocks + 1) + (levels - 1) * cfg.resblock_updown
    assert len(cache.scales) == len(model.spade_norms) == 2 * blocks


def test_cache_rows_and_runs() -> None:
    seg = torch.zeros(5, 2, 4, 4)
    seg[0, 0] = 1
    seg[2, 1] = 1
    seg[3, 0] = 1  # rows 0 and 3 equal, rows 1 and 4 null
    distinct, rows = spade._distinct_rows(seg)
    assert rows.tolist() == [0, 1, 2, 0, 1]
    assert torch.equal(distinct, seg[[0, 1, 2]])
    assert spade._runs([0, 1, 2, 3, 3, 3]) == [(0, 3, 0, 3), (3, 6, 3, 4)]
    assert spade._runs([0, 0, 1, 1]) == [(0, 2, 0, 1), (2, 4, 1, 2)]
    assert spade._runs([0, 1, 0, 1]) == [(0, 2, 0, 2), (2, 4, 0, 2)]


def test_cache_with_distinct_rows_and_mismatch() -> None:
    model = randomize(SDMUNet(TINY)).eval()
    x_t, t, segmap = inputs(TINY, n=2)
    with torch.no_grad():
        cache = model.spade_cache(segmap)
        assert cache.rows is None
        assert (model(x_t, t, segmap) - model(x_t, t, segmap, spade_cache=cache)).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="spade_cache was built"):
            model(torch.cat([x_t, x_t]), torch.cat([t, t]), None, spade_cache=cache)
        other = SDMUNet(tiny(num_res_blocks=2)).eval()
        with pytest.raises(ValueError, match="different model|SPADE norm"):
            other(x_t, t, segmap, spade_cache=cache)


def test_attention_matches_legacy_head_order() -> None:
    """Per head, qkv channels are [q | k | v] blocks (the official default); checked against plain math."""
    torch.manual_seed(0)
    block = randomize(AttentionBlock(64, num_heads=4)).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        got = block(x)
        flat = x.reshape(2, 64, 16)
        qkv = block.qkv(block.norm(flat)).reshape(2 * 4, 3 * 16, 16)
        q, k, v = qkv[:, :16], qkv[:, 16:32], qkv[:, 32:]
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / 16**0.5, dim=-1)
        ref = flat + block.proj_out(torch.einsum("bts,bcs->bct", weights, v).reshape(2, 64, 16))
    assert (got - ref.reshape(2, 64, 4, 4)).abs().max() < 1e-5


def test_heads_from_num_head_channels() -> None:
    assert AttentionBlock(128, num_heads=4, num_head_channels=32).num_heads == 4
    assert AttentionBlock(128, num_heads=4, num_head_channels=64).num_heads == 2
    assert AttentionBlock(128, num_heads=8).num_heads == 8
    with pytest.raises(ValueError, match="num_head_channels"):
        AttentionBlock(96, num_head_channels=64)


def test_timestep_embedding_layout() -> None:
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]), atol=1e-6)
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_gradient_checkpointing_same_gradients() -> None:
    cfg = tiny(dropout=0.0)
    plain = randomize(SDMUNet(cfg))
    ckpt = SDMUNet(tiny(use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x_t, t, segmap = inputs(cfg)
    for m in (plain, ckpt):
        m(x_t, t, segmap).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_size_errors() -> None:
    model = SDMUNet(tiny(channel_mult=[1.0, 1.0, 2.0], image_size=[16, 16], attention_resolutions=[4]))
    x_t, t, segmap = inputs(model.config, size=(16, 18))
    with pytest.raises(ImageSizeError, match=r"16x18.*multiples of 4"):
        model(x_t, t, segmap)
    with pytest.raises(ImageSizeError, match="multiples of 4"):
        model.spade_cache(segmap)
    with pytest.raises(ConfigError, match=r"model.image_size 16x18.*multiples of 4"):
        SDMUNet(tiny(image_size=[16, 18], channel_mult=[1.0, 1.0, 2.0], attention_resolutions=[4]))
    with pytest.raises(ValueError, match=r"segmap must be \[2, 6, 16, 16\]"):
        model(*inputs(model.config)[:2], torch.zeros(2, 5, 16, 16))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        SDMUNet(tiny(channel_mult=[0.5, 1.0]))
    with pytest.raises(ConfigError, match="attention_resolutions: 5"):
        SDMUNet(tiny(attention_resolutions=[5]))
