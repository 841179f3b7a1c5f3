"""A tiny prepared dataset and a tiny-model config for the training tests (seconds per run on CPU)."""

from __future__ import annotations

from pathlib import Path

from sdm.config import Config, resolve

TINY = [
    "model.model_channels=32", "model.channel_mult=[1,1]", "model.attention_resolutions=[16]", "model.num_heads=1",
    "model.spade_hidden=16", "diffusion.steps=100",
    "train.batch_size=4", "train.workers=2", "train.log_every=2", "train.checkpoint_every=3",
    "train.sample_every=1000", "train.keep_checkpoints=2", "train.pretrain.steps=6", "train.finetune.steps=4",
    "train.pretrain.lr=1e-3", "train.finetune.lr=5e-4", "train.finetune.drop_rate=0.2",
    "sample.steps=2", "sample.batch_size=4",
]


def make_prepared(root: Path, n: int = 20) -> Path:
    """The synthetic scenes (12 classes + instances), prepared at 32x32 with a val split."""
    from sdm.data.prepare import prepare
    from sdm.data.synthetic import synthesize

    synthesize(root / "raw", n=n, size=32, seed=0, workers=1)
    prepare("folder", root / "raw", root / "prepared", [32, 32], val_fraction=0.25, split_seed=0, workers=1)
    return root / "prepared"


def tiny_config(prepared: Path, storage: Path, *overrides: str) -> Config:
    return resolve(params=None, overrides=[*TINY, f"data.prepared={prepared}", f"train.storage_path={storage}",
                                           *overrides])


def one_thread():
    """A fixture body: torch on one thread (as a Ray worker with train.cpus_per_worker=1), restored after.

    Two torch threads on a busy 2-core machine can be 50x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
