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

Usage: python benchmarks/data.py [--n 200] [--epochs 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}, cv2 {cv2.__version__}; load average at start {os.getloadavg()[0]:.1f}")
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
