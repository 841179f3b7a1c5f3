"""The loop's parts on their own: EMA, lr schedule, derived randomness and data order, phases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdm.config import ConfigError, PhaseConfig, resolve
from sdm.train.data_order import DataOrder, derive_seed, local_positions, sample_randomness
from sdm.train.loop import plan_phases, resolve_phases
from sdm.train.optim import EMA, lr_at


def test_ema_without_warmup_is_the_official_update():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.9, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[k], 0.9 * start[k] + 0.1 * v)


def test_ema_warmup_forgets_the_initialisation_on_short_runs():
    rates = EMA(nn.Linear(1, 1), 0.999)
    seen = []
    for _ in range(3):
        seen.append(rates.current_rate())
        rates.num_updates += 1
    assert seen == pytest.approx([0.1, 2 / 11, 3 / 12])
    rates.num_updates = 100_000
    assert rates.current_rate() == 0.999


def test_ema_state_loads_into_the_model_and_checks_shapes():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.5)
    model.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict({"weight": torch.zeros(5, 5), "bias": torch.zeros(2)})


def test_lr_warmup_then_constant_or_cosine():
    const = PhaseConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="constant")
    assert lr_at(0, const) == pytest.approx(1e-4)
    assert lr_at(9, const) == pytest.approx(1e-3)
    assert lr_at(99, const) == pytest.approx(1e-3)
    cos = PhaseConfig(steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    assert lr_at(10, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(0.5e-3)
    assert lr_at(110, cos) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, cos) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "pretrain", 5, 3) == derive_seed(0, "pretrain", 5, 3)
    assert len({derive_seed(0, "pretrain", s, j) for s in range(20) for j in range(20)}) == 400
    assert derive_seed(0, "pretrain", 1) != derive_seed(0, "finetune", 1)
    assert 0 <= derive_seed("x") < 2**63


def test_data_order_covers_each_epoch_once_and_resumes_from_a_step():
    order = DataOrder(num_items=10, batch_size=3, seed=1, stream="pretrain")
    assert order.steps_per_epoch == 3
    epoch0 = [i for s in range(3) for i in order.global_indices(s)]
    assert len(set(epoch0)) == 9 and set(epoch0) <= set(range(10))
    again = DataOrder(num_items=10, batch_size=3, seed=1, stream="pretrain")
    assert again.global_indices(4) == order.global_indices(4)
    assert order.epoch_of(3) == 1 and order.global_indices(3) != order.global_indices(0)
    with pytest.raises(ValueError, match="fewer than the global batch"):
        DataOrder(num_items=2, batch_size=3, seed=0, stream="x")


def test_per_sample_randomness_splits_over_workers_exactly():
    kw = dict(seed=0, stream="pretrain", step=7, num_timesteps=1000, shape=(3, 4, 4), drop_rate=0.5)
    t, noise, drop = sample_randomness(sample_indices=range(0, 4), **kw)
    halves = [sample_randomness(sample_indices=local_positions(4, r, 2), **kw) for r in range(2)]
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), t)
    torch.testing.assert_close(torch.cat([h[1] for h in halves]), noise)
    assert torch.equal(torch.cat([h[2] for h in halves]), drop)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 1000
    _, _, none = sample_randomness(sample_indices=range(64), **{**kw, "drop_rate": 0.0})
    _, _, every = sample_randomness(sample_indices=range(64), **{**kw, "drop_rate": 1.0})
    assert not none.any() and every.all()


def test_local_positions_need_an_even_split():
    assert list(local_positions(8, 1, 2)) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="not divisible"):
        local_positions(6, 0, 4)


def test_phases_resolve_and_plan():
    cfg = resolve(params=None)
    assert resolve_phases(cfg) == ["pretrain", "finetune"]
    assert resolve_phases(cfg, "finetune") == ["finetune"]
    with pytest.raises(ConfigError, match="expected all, pretrain or finetune"):
        resolve_phases(cfg, "warmup")
    cfg = resolve(params=None, overrides=["train.phases=[finetune,pretrain]"])
    with pytest.raises(ConfigError, match="pretrain before finetune"):
        resolve_phases(cfg)
    cfg = resolve(params=None, overrides=["train.pretrain.steps=30", "train.finetune.steps=10"])
    plan = plan_phases(cfg, ["pretrain", "finetune"])
    assert [(p.name, p.global_offset, p.total_steps) for p in plan] == [("pretrain", 0, 40), ("finetune", 30, 40)]
    assert plan[1].index == 1 and plan[1].cfg is cfg.train.finetune
    cfg = resolve(params=None, overrides=["train.pretrain.steps=0", "train.finetune.steps=0"])
    with pytest.raises(ConfigError, match="0 steps"):
        plan_phases(cfg, ["pretrain", "finetune"])
