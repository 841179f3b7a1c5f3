"""Evaluation sampling spread over Ray workers, with the images one process would make.

``sdm.sampling.generate`` gives sample i the noise of its own generator,
seeded ``seed + i``. The N samples are cut into contiguous slices on
``batch_size`` boundaries, one per worker, and worker k runs the same
``generate`` on its slice [a, b) with seed ``seed + a``: every batch is the
batch one process would sample (same label maps, same seeds, same size), so
the images, and every metric computed from them in the driver, do not depend
on the number of workers. Each worker is a Ray actor that loads the
checkpoint once (on its GPU with ``use_gpu``) and serves every guidance scale
and sampler of the evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def slices(n: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [a, b) ranges covering 0..n, cut on batch_size boundaries, at most ``workers`` of them,
    as even as whole batches allow (empty ones left out)."""
    batches = math.ceil(n / batch_size)
    out, start = [], 0
    for k in range(workers):
        take = batches // workers + (k < batches % workers)
        stop = min(n, start + take * batch_size)
        if stop > start:
            out.append((start, stop))
        start = stop
    return out


def cluster_sampling(evaluate_workers: int, evaluate_use_gpu: bool, train_workers: int, train_use_gpu: bool
                     ) -> tuple[int, bool]:
    """(workers, use_gpu) for an evaluation in a pipeline: ``evaluate.workers`` when set above 1; else, when a
    cluster is there (``RAY_ADDRESS``), as many workers as training uses, on GPUs when training is; else 1."""
    import os

    if evaluate_workers > 1 or not os.environ.get("RAY_ADDRESS", "").strip():
        return evaluate_workers, evaluate_use_gpu
    return train_workers, train_use_gpu


class _SamplingWorker:
    """One Ray actor: the checkpoint's model on this worker's device, sampling slices with ``generate``."""

    def __init__(self, checkpoint: str, use_ema: bool, device: str, threads: int) -> None:
        import torch

        from sdm.model import load_checkpoint

        torch.set_num_threads(threads)
        self.model, self.config = load_checkpoint(Path(checkpoint), use_ema=use_ema, device=device)

    def generate(self, labels: np.ndarray, instances: np.ndarray | None, kwargs: dict[str, Any]) -> np.ndarray:
        from sdm.sampling import generate

        return generate(self.model, self.config, labels, instances, **kwargs)


class SamplingPool:
    """``workers`` Ray actors holding the checkpoint; ``generate`` as ``sdm.sampling.generate``, spread over them.

    Close it (or use it as a context manager) to free the workers. With ``use_gpu`` each worker holds one GPU
    (``cuda``); else one CPU and ``threads`` torch threads (default: this process's).
    """

    def __init__(self, checkpoint: str | Path, *, workers: int, use_ema: bool = True, use_gpu: bool = False,
                 threads: int | None = None) -> None:
        import ray
        import torch

        from sdm.train.ray_run import ensure_ray

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ensure_ray()
        threads = threads or torch.get_num_threads()
        actor = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_SamplingWorker)
        device = "cuda" if use_gpu else "cpu"
        self.workers = [actor.remote(str(checkpoint), use_ema, device, threads) for _ in range(workers)]

    def generate(self, labels: np.ndarray, instances: np.ndarray | None, *, seed: int, batch_size: int,
                 **kwargs: Any) -> np.ndarray:
        """labels [N, H, W] int (instances [N, H, W] or None) -> uint8 [N, H, W, 3], sample i seeded seed + i.

        ``kwargs``: the rest of ``generate``'s keywords (guidance_scale, sampler, steps ...).
        """
        import ray

        refs = []
        for k, (a, b) in enumerate(slices(len(labels), batch_size, len(self.workers))):
            inst = instances[a:b] if instances is not None else None
            refs.append(self.workers[k].generate.remote(labels[a:b], inst,
                                                        {**kwargs, "seed": seed + a, "batch_size": batch_size}))
        parts = ray.get(refs)
        return np.concatenate(parts) if parts else ray.get(self.workers[0].generate.remote(labels, instances, {
            **kwargs, "seed": seed, "batch_size": batch_size}))

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def __enter__(self) -> SamplingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
