"""Data benchmark: `sdm data prepare` throughput, and PreparedDataset vs reading raw files.

Raw data: synthetic scenes at 256 px, also stored as 512 px JPEG images +
PNG labels (the size and encoding of ADE20K / COCO-Stuff photos). Figures:

- prepare: images/s, 512 px JPEG -> 256 px shards, with 1 and 2 threads;
- loader: samples/s at 256 px through a DataLoader (batch 16, training
  augmentation) with 1 and 2 workers, for
    * PreparedDataset (PNG bytes from Parquet, in memory),
    * raw 256 px PNG files (the same decode + augment, files opened per item),
    * raw 512 px JPEG files resized to 256 per item (what a loader without a
      preparation step does at every step, like the official one).

Issue 18 parts (``--part``; ``speed`` is the above):

- memory: a training worker's RSS growth (build the train split's dataset, then
  one epoch of rank 0 of ``--world`` through ``step_batches``), each in a fresh process,
  at 1k, 5k, 20k items of 256 px synthetic scenes (``--in-memory``: also with
  the whole split's bytes held in memory, as the loader did before streaming);
- prepare-ray: ``sdm data prepare`` on 1 process (all cores) vs a 2-node local
  Ray cluster (both nodes on this one machine);
- loader: the streaming loader's samples/s per process (``step_batches``,
  training augmentation) at the toy size (32 px) and 256 px, and, with
  ``--ray-data``, Ray Data's streaming split over the same shards (bytes only);
- paper: GB per training worker for the paper's datasets, before and after,
  from their training image counts and the bytes per item measured here.

Usage: python benchmarks/data.py [--part speed|memory|prepare-ray|loader|paper] [--n 200] [--epochs 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdm.data.loader import PreparedDataset  # noqa: E402
from sdm.data.prepare import prepare  # noqa: E402
from sdm.data.synthetic import synthesize  # noqa: E402
from sdm.data.transforms import resize_pair, train_augment  # noqa: E402

SIZE = 256


class RawFolderDataset(Dataset):
    """The baseline: read image + label files per item, resize if needed, then the same augmentation."""

    def __init__(self, root: Path, seed: int = 0):
        self.images = sorted((root / "images").iterdir())
        self.labels = [root / "labels" / (p.stem + ".png") for p in self.images]
        self.transform = train_augment((SIZE, SIZE), random_crop=True, random_flip=True, crop_scale=(0.8, 1.0))
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = cv2.cvtColor(cv2.imread(str(self.images[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(self.labels[i]), cv2.IMREAD_UNCHANGED).astype(np.int64)
        image, label, _ = resize_pair(image, label, None, (SIZE, SIZE))
        self.transform.set_random_seed(self.seed + i)
        out = self.transform(image=image, masks=[label])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float() / 127.5 - 1,
            "label": torch.from_numpy(np.asarray(out["masks"][0], dtype=np.int64)),
        }


def make_raw(root: Path, n: int) -> tuple[Path, Path]:
    raw256 = synthesize(root / "raw256", n=n, size=SIZE, seed=0)
    shutil.rmtree(raw256 / "instances")
    raw512 = root / "raw512"
    (raw512 / "images").mkdir(parents=True)
    (raw512 / "labels").mkdir()
    shutil.copy(raw256 / "classes.json", raw512 / "classes.json")
    for p in sorted((raw256 / "images").iterdir()):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        label = cv2.imread(str(raw256 / "labels" / p.name), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(raw512 / "images" / (p.stem + ".jpg")),
                    cv2.resize(image, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(raw512 / "labels" / p.name),
                    cv2.resize(label, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_NEAREST))
    return raw256, raw512


def loader_rate(dataset: Dataset, workers: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=16, shuffle=False, num_workers=workers, drop_last=False)
    next(iter(loader))  # start-up (worker spawn, first decode) is not throughput
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


# --- issue 18: memory per worker, preparation on Ray, loader vs training step, GB per worker on paper ---

TOY_STEP_IMG_S = 14.8  # a toy training worker's consumption (RESULTS.md, Training throughput: 1 x 1, batch 8)
# The paper's model on a GPU: ~3.6 TFLOP of convolutions per image per forward (RESULTS.md, Sampling speed:
# 7194 GFLOP per guided step = 2 forwards); a training step is ~3 forwards' work; at ~150 TFLOP/s sustained
# bf16 (an A100/H100 at 50-50% of peak) that is ~14 images/s per GPU.
PAPER_STEP_IMG_S = 150e12 / (3 * 3.6e12)
# Training images per dataset at the paper's resolution (H x W).
PAPER_DATASETS = {"ADE20K": (20_210, 256, 256), "Cityscapes": (2_975, 256, 512),
                  "COCO-Stuff": (118_287, 256, 256), "CelebAMask-HQ": (28_000, 256, 256)}


def _scaled(root: Path, n: int, noise: bool = False) -> Path:
    """A prepared 256 px train split of ``n`` items (64 synthetic scenes' rows repeated; tests/_data_streaming)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _data_streaming import replicate

    base = root / "base"
    if not base.exists():
        synthesize(root / "raw", n=72, size=SIZE, seed=0)
        prepare("folder", root / "raw", base, [SIZE, SIZE], val_fraction=0.1, split_seed=0)
    return replicate(base, root / f"n{n}{'-noise' if noise else ''}", n, noise=noise)


def _probe(prepared: Path, in_memory: bool, world: int) -> dict:
    code = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import data; "
            "print(json.dumps(data.probe_rss(sys.argv[3], sys.argv[4] == '1', int(sys.argv[5]))))")
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", code, str(here), str(here.parent / "tests"), str(prepared),
                          "1" if in_memory else "0", str(world)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe_rss(prepared: str, in_memory: bool, world: int) -> dict:
    """(In a fresh process.) RSS growth of rank 0's dataset and epoch; ``in_memory``: the pre-streaming way."""
    import _data_streaming

    if in_memory:  # the loader before streaming: every row's bytes of the split read into memory at open
        from sdm.data.shards import read_rows

        class InMemoryRows:
            def __init__(self, paths: list[Path], columns: list[str], cache_groups: int = 2) -> None:
                table = read_rows(paths, ["id", *columns])
                self._ids = table.column("id").to_pylist()
                self._columns = {c: table.column(c).combine_chunks() for c in columns}

            def ids(self) -> list[str]:
                return self._ids

            def cell(self, column: str, row: int) -> np.ndarray:
                return np.frombuffer(self._columns[column][row].as_buffer(), np.uint8)

        import sdm.data.loader

        sdm.data.loader.ShardRows = InMemoryRows  # type: ignore[assignment,misc]
    t = time.perf_counter()
    result = _data_streaming.probe(prepared, world_size=world)
    return {**result, "seconds": time.perf_counter() - t}


def part_memory(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"\nmemory per training worker: RSS growth of building the train split's dataset and one epoch of rank 0 "
          f"of {args.world} (global batch {max(16, args.world)}), {SIZE} px synthetic scenes, a fresh process each")
    with tempfile.TemporaryDirectory(prefix="sdm-bench-mem-") as tmp:
        for n in sizes:
            d = _scaled(Path(tmp), n)
            shard_mib = sum(p.stat().st_size for p in d.glob("train-*.parquet")) / 2**20
            for in_memory in ([True, False] if args.in_memory else [False]):
                r = _probe(d, in_memory, args.world)
                name = "in memory (before)" if in_memory else "streaming (after)"
                print(f"  {n:6d} items ({shard_mib:7.1f} MiB of shards, {shard_mib * 2**20 / n / 1e3:.1f} kB/item) "
                      f"{name:20s}: peak +{r['peak'] / 2**20:7.1f} MiB (after open +{r['built'] / 2**20:6.1f}), "
                      f"{r['rank_items']} items in {r['seconds']:.1f} s")
            shutil.rmtree(d)


def part_prepare_ray(args: argparse.Namespace) -> None:
    import ray
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="sdm-bench-prep-") as tmp:
        root = Path(tmp)
        _, raw512 = make_raw(root, args.n)
        print(f"\nprepare ({args.n} images, 512 px JPEG -> {SIZE} px shards; best of {args.reps})")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            cluster.wait_for_nodes()
            print(f"  Ray: {len(ray.nodes())} nodes on this machine, {ray.cluster_resources()['CPU']:g} CPUs")
            rates = {"1 process, all cores (threads)": 0.0, "2-node local Ray cluster": 0.0}
            outs = {}
            for _ in range(args.reps):
                for name in rates:
                    out = root / f"out-{len(outs)}"
                    t = time.perf_counter()
                    prepare("folder", raw512, out, [SIZE, SIZE], ray=name.startswith("2-node"))
                    rates[name] = max(rates[name], args.n / (time.perf_counter() - t))
                    outs.setdefault(name, out)
            for name, rate in rates.items():
                print(f"  {name:32s} {rate:7.1f} images/s")
            a, b = (sorted(p.read_bytes() for p in o.iterdir() if p.suffix in (".parquet", ".json"))
                    for o in outs.values())
            print(f"  shards + manifest byte-identical: {a == b}")
        finally:
            ray.shutdown()
            cluster.shutdown()


def _loader_rate(prepared: Path, epochs: int) -> float:
    from sdm.train.data_order import DataOrder, local_positions, step_batches

    ds = PreparedDataset(prepared, "train", augment=True, shuffle=False)
    order = DataOrder(len(ds), 16, 0, "pretrain")
    steps = order.steps_per_epoch * epochs
    next(step_batches(ds, order, 0, 1, local_positions(16, 0, 1)))  # warm-up: open, first group
    t, n = time.perf_counter(), 0
    for b in step_batches(ds, order, 0, steps, local_positions(16, 0, 1)):
        n += len(b["id"])
    return n / (time.perf_counter() - t)


def part_loader(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sdm-bench-loader-") as tmp:
        root = Path(tmp)
        toy = synthesize(root / "toy", n=400, size=64, seed=0)
        prepare("folder", toy, root / "toy-prepared", [32, 32])
        big = _scaled(root, 480)
        rates = {"toy (32 px)": 0.0, f"{SIZE} px": 0.0}
        for _ in range(args.reps):
            rates["toy (32 px)"] = max(rates["toy (32 px)"], _loader_rate(root / "toy-prepared", args.epochs))
            rates[f"{SIZE} px"] = max(rates[f"{SIZE} px"], _loader_rate(big, 1) if args.epochs else 0.0)
        print(f"\nloader: streaming PreparedDataset through step_batches (batch 16, training augmentation, "
              f"1 process, no loader workers; best of {args.reps})")
        needs = {"toy (32 px)": ("toy config, measured on this CPU", TOY_STEP_IMG_S),
                 f"{SIZE} px": ("paper config on a GPU, estimated", PAPER_STEP_IMG_S)}
        for name, rate in rates.items():
            what, step = needs[name]
            print(f"  {name:12s} {rate:8.1f} samples/s; a training step consumes {step:5.1f} img/s ({what}): "
                  f"{rate / step:5.1f}x; loader processes for 4x: {max(1, int(np.ceil(4 * step / rate)))}")
        if args.ray_data:
            _ray_data_rate(big)


def _ray_data_rate(prepared: Path) -> None:
    """Rows/s of the bytes alone (no PNG decode): our row-group reads in the training order vs Ray Data."""
    import ray

    from sdm.data.stream import ShardRows
    from sdm.train.data_order import DataOrder

    paths = sorted(prepared.glob("train-*.parquet"))
    store = ShardRows(paths, ["image", "label"])
    order = DataOrder(len(store), 16, 0, "pretrain")
    rows = [r for s in range(order.steps_per_epoch) for r in order.global_indices(s)]
    t = time.perf_counter()
    for r in rows:
        store.cell("image", r)
    ours = len(rows) / (time.perf_counter() - t)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_parquet([str(p) for p in paths], columns=["image", "label"])
        it = ds.streaming_split(1)[0]
        t, n = time.perf_counter(), 0
        for batch in it.iter_batches(batch_size=16, batch_format="pyarrow"):
            n += batch.num_rows
        theirs = n / (time.perf_counter() - t)
    finally:
        ray.shutdown()
    print(f"  bytes only, {len(rows)} rows: ShardRows in the training order (random rows) {ours:8.1f} rows/s; "
          f"Ray Data streaming_split(1) in file order {theirs:8.1f} rows/s")


def part_paper(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sdm-bench-paper-") as tmp:
        per_item = {}
        for noise in (False, True):
            d = _scaled(Path(tmp), 400, noise=noise)
            per_item[noise] = sum(p.stat().st_size for p in d.glob("train-*.parquet")) / 400
    print(f"\nbytes per {SIZE}x{SIZE} item in the shards: synthetic scenes {per_item[False] / 1e3:.1f} kB, "
          f"photo-like (incompressible pixels) {per_item[True] / 1e3:.1f} kB")
    print("GB per training worker (before: the split's bytes x the measured in-memory growth factor; after: flat)")
    for name, (count, h, w) in PAPER_DATASETS.items():
        scale = h * w / SIZE**2
        lo, hi = (count * per_item[k] * scale / 1e9 for k in (False, True))
        print(f"  {name:14s} {count:7d} images at {h}x{w}: shards {lo:6.1f}-{hi:6.1f} GB; before "
              f"{lo * args.growth:6.1f}-{hi * args.growth:6.1f} GB per worker; after {args.flat_gb:.2f} GB")


PARTS = {"memory": part_memory, "prepare-ray": part_prepare_ray, "loader": part_loader, "paper": part_paper}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="speed", choices=["speed", *PARTS])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved; the best is reported")
    parser.add_argument("--sizes", default="1000,5000,20000", help="memory: dataset sizes (items)")
    parser.add_argument("--world", type=int, default=4, help="memory: ranks (the probe is rank 0)")
    parser.add_argument("--in-memory", action="store_true", help="memory: also the whole-split-in-memory loader")
    parser.add_argument("--ray-data", action="store_true", help="loader: also Ray Data's streaming split")
    parser.add_argument("--growth", type=float, default=5.2, help="paper: in-memory RSS / shard bytes (measured)")
    parser.add_argument("--flat-gb", type=float, default=0.13, help="paper: the streaming peak (measured)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}, cv2 {cv2.__version__}; load average at start {os.getloadavg()[0]:.1f}")
    if args.part != "speed":
        PARTS[args.part](args)
        print(f"\nload average at end {os.getloadavg()[0]:.1f} (other processes share these cores)")
        return
    with tempfile.TemporaryDirectory(prefix="sdm-bench-data-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        raw256, raw512 = make_raw(root, args.n)
        print(f"synth: {args.n} scenes at {SIZE} px in {time.perf_counter() - t:.1f} s")

        print(f"\nprepare ({args.n} images, 512 px JPEG -> {SIZE} px Parquet shards; best of {args.reps})")
        prep_rates = {1: 0.0, 2: 0.0}
        for _ in range(args.reps):  # interleaved, so drifting load hits both alike
            for workers in (1, 2):
                out = root / f"prepared-w{workers}"
                t = time.perf_counter()
                prepare("folder", raw512, out, [SIZE, SIZE], workers=workers)
                prep_rates[workers] = max(prep_rates[workers], args.n / (time.perf_counter() - t))
        for workers in (1, 2):
            print(f"  {workers} thread(s): {prep_rates[workers]:7.1f} images/s")
        print(f"  2 vs 1 thread(s): {prep_rates[2] / prep_rates[1]:.2f}x")
        toy = synthesize(root / "toy", n=400, size=64, seed=0)
        toy_rate = 0.0
        for _ in range(args.reps):
            t = time.perf_counter()
            prepare("folder", toy, root / "toy-prepared", [32, 32])
            toy_rate = max(toy_rate, 400 / (time.perf_counter() - t))
        print(f"  the toy dataset (400 scenes, 64 -> 32 px, all cores): {toy_rate:7.1f} images/s")

        prepared = root / "prepared-w2"
        sources = {
            "PreparedDataset (Parquet)": lambda: PreparedDataset(prepared, "train", augment=True),
            "raw 256 px PNG files": lambda: RawFolderDataset(raw256),
            "raw 512 px JPEG + resize": lambda: RawFolderDataset(raw512),
        }
        print(f"\nloader (samples/s at {SIZE} px, batch 16, training augmentation, {args.epochs} epoch(s); "
              f"best of {args.reps})")
        rates: dict[tuple[str, int], float] = {}
        for _ in range(args.reps):
            for workers in (1, 2):
                for name, make in sources.items():
                    rate = loader_rate(make(), workers, args.epochs)
                    rates[name, workers] = max(rates.get((name, workers), 0.0), rate)
        for workers in (1, 2):
            for name in sources:
                print(f"  {workers} worker(s)  {name:28s} {rates[name, workers]:7.1f} samples/s")
        for workers in (1, 2):
            base = rates["PreparedDataset (Parquet)", workers]
            ratios = ", ".join(f"{base / rates[name, workers]:.2f}x vs {name}" for name in list(sources)[1:])
            print(f"  {workers} worker(s): PreparedDataset is {ratios}")
        print(f"\nload average at end {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
