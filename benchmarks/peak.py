"""Peak fp32 and bf16 GFLOP/s of this machine on a large convolution and a large matmul (torch, best of N).

The sampling benchmark states each of its figures as a fraction of these (``--peak-json``).
Shapes: matmul S x S x S (``--matmul``, 2048); convolution 3x3, 256 -> 256 channels over an M x M map
(``--conv-map``, 64: the paper U-Net's level-2 conv at 256x256 input), batch 2. Each is timed
``--repeats`` times after a warm-up and the best kept. On CUDA (``--device cuda``) the same, synchronised.
``--clock cpu`` times this process's CPU time (with ``--threads 1``: the per-core figure, robust to
other jobs on a shared machine).

Usage: python benchmarks/peak.py [--device cpu|cuda] [--repeats 5] [--threads N] [--clock wall|cpu]
       [--matmul 2048] [--conv-map 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdm.precision import bf16_native  # noqa: E402

CLOCK = time.perf_counter


def _best(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        sync()
        best = min(best, CLOCK() - start)
    return best


@torch.no_grad()
def peak(device: torch.device, dtype: torch.dtype, repeats: int, size: int = 2048, conv_map: int = 64
         ) -> dict[str, float]:
    """GFLOP/s (2 per multiply-add) of one matmul and one 3x3 convolution in ``dtype`` on ``device``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    mm_flop = 2 * size**3
    x = torch.randn(2, 256, conv_map, conv_map, generator=g).to(device, dtype)
    w = torch.randn(256, 256, 3, 3, generator=g).to(device, dtype)
    conv_flop = 2 * 2 * 256 * conv_map * conv_map * 256 * 9
    mm_s = _best(lambda: a @ b, repeats, device)
    conv_s = _best(lambda: F.conv2d(x, w, padding=1), repeats, device)
    # Channels-last (NHWC) takes other kernels (on a CPU without native bf16, a much faster bf16 one).
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    conv_cl_s = _best(lambda: F.conv2d(x_cl, w_cl, padding=1), repeats, device)
    return {"matmul_gflops": mm_flop / mm_s / 1e9, "conv_gflops": conv_flop / conv_s / 1e9,
            "conv_channels_last_gflops": conv_flop / conv_cl_s / 1e9, "matmul_s": mm_s, "conv_s": conv_s,
            "conv_channels_last_s": conv_cl_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--matmul", type=int, default=2048, help="matmul size S (S x S x S)")
    ap.add_argument("--conv-map", type=int, default=64, help="conv feature map size M (M x M)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {capability}, bf16 native: {bf16_native(device)}, "
          f"{args.clock} clock, load avg {os.getloadavg()[0]:.1f}", flush=True)
    results = {"device": str(device), "capability": capability, "bf16_native": bf16_native(device)}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        r = peak(device, dtype, args.repeats, args.matmul, args.conv_map)
        results[name] = r
        print(f"{name}: matmul {args.matmul}^3 {r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_s'] * 1e3:.1f} ms), "
              f"conv 3x3 256->256 @{args.conv_map}x{args.conv_map} x2 {r['conv_gflops']:.1f} GFLOP/s "
              f"({r['conv_s'] * 1e3:.1f} ms), channels-last {r['conv_channels_last_gflops']:.1f} GFLOP/s",
              flush=True)
    for name in ("fp32", "bf16"):
        results[f"peak_{name}_gflops"] = max(v for k, v in results[name].items() if k.endswith("gflops"))
        print(f"peak {name}: {results[f'peak_{name}_gflops']:.1f} GFLOP/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
