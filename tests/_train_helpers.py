"""A tiny prepared dataset and a tiny-model config for the training tests (seconds per run on CPU)."""

from __future__ import annotations

import os
from pathlib import Path

from sdm.config import Config, ConfigError, resolve
from sdm.train.events import Event, Hook, Launching, StepStart

FAULT_MARKER = "fault_injected"

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


class ExitAtStep(Hook):
    """A worker hook: rank ``rank`` dies (``os._exit``) once, before run step ``step`` (0-based).

    The ``marker`` file, written just before, makes the restarted worker survive. Ray pickles this
    hook to its workers, which cannot import tests/: register this module with
    ``ray.cloudpickle.register_pickle_by_value`` first.
    """

    def __init__(self, step: int, marker: Path, rank: int = 1) -> None:
        self.step, self.marker, self.rank = step, Path(marker), rank

    def handle(self, event: Event) -> None:
        if isinstance(event, Launching) and event.workers <= self.rank:
            raise ConfigError(f"exit at step {self.step} kills rank {self.rank}, but the run has "
                              f"{event.workers} worker(s)")
        if not isinstance(event, StepStart) or event.rank != self.rank or event.global_step != self.step:
            return
        if self.marker.exists():
            return
        self.marker.write_text(f"rank {self.rank} exited at run step {self.step}\n")
        print(f"[train] fault injection: rank {self.rank} exits at run step {self.step}", flush=True)
        os._exit(17)
