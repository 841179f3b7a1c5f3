"""Training throughput (img/s) of the real loop: toy and paper (ADE20K) configs, 1 vs 2 workers.

Runs ``sdm.train.worker.run_training`` (the code Ray workers run: derived
per-sample noise, segmap, hybrid loss, DDP, clipping, AdamW, EMA) on an
in-memory dataset of random label maps of the config's size and classes, so
the figure is the training step, not PNG decoding. Several workers are
``torch.multiprocessing`` processes over gloo (CPU) or nccl (CUDA), each with
``--threads`` torch threads: what Ray workers with train.cpus_per_worker do,
without Ray's start-up (~25 s, paid once per run). img/s is the global batch
over the median seconds per step after ``--warmup`` steps; ``cpu s/step`` is
rank 0's CPU time per step (what a step costs when each worker has its own
core, whatever else the machine is running).

    python benchmarks/train.py                         # toy, 1 and 2 workers, CPU
    python benchmarks/train.py --config ade20k --workers 1 --steps 2 --warmup 1
    python benchmarks/train.py --config ade20k --device cuda --precision bf16 --checkpointing --workers 1

One column per ``--precision`` (default fp32 and bf16, run one after the other for each row) and
their ratio: bf16 autocast pays only where the device runs bf16 natively (``train.precision: auto``
picks it there; the first line says what auto is on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdm.config import Config, resolve  # noqa: E402
from sdm.train.distributed import WorkerContext  # noqa: E402
from sdm.train.events import Event, Hook, StepLog  # noqa: E402


class RandomScenes:
    """``n`` random label maps (blocky, all classes) with random images; items as PreparedDataset's."""

    def __init__(self, config: Config, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        h, w = config.model.image_size
        k = config.model.num_classes
        blocks = torch.randint(0, k, (n, h // 8, w // 8), generator=g)
        self.labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
        self.images = torch.rand(n, 3, h, w, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "instance": self.labels[i], "id": str(i)}


class Timings(Hook):
    """Wall seconds per step (from the loop's log) and rank 0's CPU seconds per step."""

    def __init__(self) -> None:
        self.s_per_step: list[float] = []
        self.cpu_per_step: list[float] = []
        self._cpu = time.process_time()

    def handle(self, event: Event) -> None:
        if not isinstance(event, StepLog):
            return
        self.s_per_step.append(event.metrics["s_per_step"])
        now = time.process_time()
        self.cpu_per_step.append(now - self._cpu)
        self._cpu = now


def bench_config(name: str, per_worker_batch: int, workers: int, steps: int, warmup: int, precision: str,
                 checkpointing: bool) -> Config:
    sets = [f"train.batch_size={per_worker_batch * workers}", f"train.pretrain.steps={warmup + steps}",
            "train.finetune.steps=0", "train.log_every=1", "train.checkpoint_every=1000000",
            f"train.precision={precision}", f"model.use_checkpoint={str(checkpointing).lower()}"]
    return resolve(preset=None if name == "toy" else name, overrides=sets, params=None)


def worker(rank: int, args: argparse.Namespace, root: str, out: str) -> None:
    from sdm.train.checkpoint import LocalCheckpointSink
    from sdm.train.worker import run_training

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if args.workers_now > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{root}/pg", rank=rank,
                                world_size=args.workers_now)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    config = bench_config(args.config_now, args.batch_now, args.workers_now, args.steps, args.warmup,
                          args.precision, args.checkpointing)
    ctx = WorkerContext(rank=rank, world_size=args.workers_now, local_rank=rank, device=device)
    timings = Timings()
    run_dir = Path(root) / "run"
    run_training(config, run_dir, ctx=ctx, phases=["pretrain"], hooks=timings,
                 sink=LocalCheckpointSink(run_dir, 1, ctx),
                 dataset=RandomScenes(config, max(config.train.batch_size * 2, 8)))
    if rank == 0:
        measured = timings.s_per_step[args.warmup:]
        s = statistics.median(measured)
        result = {"config": args.config_now, "workers": args.workers_now, "batch_per_worker": args.batch_now,
                  "threads_per_worker": args.threads, "device": args.device, "precision": args.precision,
                  "checkpointing": args.checkpointing, "s_per_step": s,
                  "img_per_s": config.train.batch_size / s, "steps_measured": len(measured),
                  "cpu_s_per_step": statistics.median(timings.cpu_per_step[args.warmup:])}
        if cuda:
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        Path(out).write_text(json.dumps(result))
    if args.workers_now > 1:
        dist.destroy_process_group()


def memory_needed_gib(args: argparse.Namespace) -> float:
    """fp32 weights, gradients, AdamW's two moments and the EMA, per worker, plus a third for activations."""
    from sdm.model import SDMUNet

    config = bench_config(args.config_now, args.batch_now, 1, 1, 1, args.precision, args.checkpointing)
    with torch.device("meta"):
        params = sum(p.numel() for p in SDMUNet(config.model).parameters())
    return params * 4 * 5 * 1.33 / 2**30


def memory_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "cpu":
        need, have = memory_needed_gib(args) * args.workers_now, memory_available_gib()
        if have is not None and need > have:
            return {"skipped": f"needs ~{need:.0f} GiB RAM, {have:.0f} GiB available"}
    with tempfile.TemporaryDirectory(prefix="sdm-bench-train-") as root:
        out = os.path.join(root, "result.json")
        if args.workers_now == 1:
            worker(0, args, root, out)
        else:
            mp.spawn(worker, args=(args, root, out), nprocs=args.workers_now, join=True)
        return json.loads(Path(out).read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="toy", help="toy, ade20k (the paper's), any preset, or 'all' (toy + ade20k)")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts")
    p.add_argument("--batch", type=int, default=0, help="per-worker batch (default: toy 8, paper configs 1)")
    p.add_argument("--steps", type=int, default=8, help="measured steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="fp32,bf16",
                   help="comma list of train.precision values, one column each (auto, fp32, bf16)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (model.use_checkpoint)")
    args = p.parse_args()
    configs = ["toy", "ade20k"] if args.config == "all" else [args.config]
    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    bad = [x for x in precisions if x not in ("auto", "fp32", "bf16")]
    if bad or not precisions:
        p.error(f"--precision {args.precision}: expected a comma list of auto, fp32, bf16")
    from sdm.precision import resolve_precision

    auto = resolve_precision("auto", "cuda" if args.device == "cuda" else "cpu")
    print(f"# train.precision auto on this {args.device}: {auto}")
    head = " ".join(f"{'img/s ' + x:>11} {'s/step':>7}" for x in precisions)
    ratio = "bf16 x" if {"fp32", "bf16"} <= set(precisions) else ""
    print(f"{'config':8} {'workers':>7} {'batch/w':>7} {'threads':>7} {head} {'cpu s/step':>10} {'peak GiB':>8} "
          f"{ratio}")
    for name in configs:
        for workers in [int(w) for w in args.workers.split(",")]:
            args.config_now, args.workers_now = name, workers
            args.batch_now = args.batch or (8 if name == "toy" else 1)
            results = {}
            for precision in precisions:
                args.precision = precision
                results[precision] = run_one(args)
            skipped = [r["skipped"] for r in results.values() if "skipped" in r]
            if skipped:
                print(f"{name:8} {workers:>7} {args.batch_now:>7} {args.threads:>7}  skipped: {skipped[0]}",
                      flush=True)
                continue
            last = results[precisions[-1]]
            peak = f"{last['peak_mem_gib']:.2f}" if "peak_mem_gib" in last else "-"
            cells = " ".join(f"{r['img_per_s']:>11.3g} {r['s_per_step']:>7.3f}" for r in results.values())
            speedup = (f"{results['fp32']['s_per_step'] / results['bf16']['s_per_step']:.2f}x" if ratio else "")
            print(f"{name:8} {workers:>7} {args.batch_now:>7} {args.threads:>7} {cells} "
                  f"{last['cpu_s_per_step']:>10.3f} {peak:>8} {speedup}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
