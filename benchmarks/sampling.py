"""Sampling speed: the plain guided path (two forwards per step, no cache) vs ours (one batched forward + SPADE cache).

Same weights, same label maps, same x_t and timesteps, same number of steps.
Per configuration it measures, interleaved (plain step, our step, plain step,
...) so that load on a shared machine hits both alike, and keeps the best of
the repetitions:

- plain step: ``sample_loop(..., batched_cfg=False, use_spade_cache=False)``'s
  work per step = the model on [x; label] and on [x; null], batch N each;
- our step: one forward of x on [label; null] with the SPADE cache (the encoder, which never sees
  the label map, on the N rows; middle and decoder on 2N);
- cache: building that cache once per sampling call (for [label; null]).

Seconds per image for S steps follow from these: plain S * step / N, ours
(cache + S * step) / N. For small configs a whole ``sample_loop`` call
(dpmpp, S steps, both paths) is also timed end to end (``--full``).

Configurations (random weights; the time does not depend on their values):
- toy: ``resolve(preset="toy")`` (32x32, 12 classes + edges, 32 channels, mult 1,2,2);
- toy64: toy at 64x64 with model_channels 64, channel_mult 1,2,3,4 (label-map convs: 28% of a forward's FLOPs);
- toy64-ade: toy at 64x64 (model_channels 32, channel_mult 1,2,2, attention at 16) with ADE20K's 151
  classes and no instance channel (label-map convs: 66% of the FLOPs);
- ade20k: ``resolve(preset="ade20k")``, the paper's config (256x256, 151
  classes, 256 channels, mult 1,1,2,2,4,4, attention at 32,16,8), in float32
  (``use_fp16`` is a GPU setting).

Each line also gives the conv GFLOP of a plain and of our guided step: their ratio is the speed-up
the exact optimisations can reach at best when time follows FLOPs.

Speed levers (issue 19, ``--variants``): our guided step again under each of fp32 eager (today's path),
bf16 autocast, channels-last, torch.compile (compile time reported apart: the first call of a shape) and
bf16 + channels-last, with the speed-up over fp32 eager measured in the same run, achieved GFLOP/s
(conv GFLOP / s) and its fraction of the machine's peak (``--peak-json`` from benchmarks/peak.py), the
SPADE cache's bytes per label map and the peak memory per image (CPU: the process's peak RSS above
what it held before the variant, reset through /proc/self/clear_refs; CUDA: max_memory_allocated).

Usage: python benchmarks/sampling.py [--configs toy,toy64,toy64-ade,ade20k] [--batch 1] [--repeats 3]
       [--steps-measured 2] [--steps 25] [--full toy,toy64,toy64-ade] [--threads N] [--clock wall|cpu]
       [--device cpu|cuda] [--variants fp32,bf16,channels-last,compiled,bf16+channels-last]
       [--variant-configs toy,toy64-ade,ade20k] [--peak-json PATH] [--skip-plain]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from variants import measure_variants  # noqa: E402

from sdm.conditioning import make_segmap  # noqa: E402
from sdm.config import Config, resolve  # noqa: E402
from sdm.diffusion import GaussianDiffusion, GuidedDenoiser, sample_loop  # noqa: E402
from sdm.model import SDMUNet  # noqa: E402
from sdm.nn.spade import spade_cache_bytes_per_row  # noqa: E402

CONFIGS = {
    "toy": ("toy", []),
    "toy64": ("toy", ["model.image_size=[64,64]", "data.image_size=[64,64]", "model.model_channels=64",
                      "model.channel_mult=[1,2,3,4]"]),
    "toy64-ade": ("toy", ["model.image_size=[64,64]", "data.image_size=[64,64]", "model.attention_resolutions=[16]",
                          "model.num_classes=151", "model.use_instance=false"]),
    "ade20k": ("ade20k", ["model.use_fp16=false", "model.use_checkpoint=false"]),
}
GUIDANCE = 1.5


@torch.no_grad()
def conv_gflop(fn) -> float:
    """GFLOP (2 per multiply-add) of every 2-D convolution ``fn()`` runs: the bulk of the U-Net's work."""
    original = F.conv2d
    total = [0]

    def counting(inp, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        out = original(inp, weight, bias, stride, padding, dilation, groups)
        total[0] += 2 * out.numel() * weight[0].numel()
        return out

    F.conv2d = counting
    try:
        fn()
    finally:
        F.conv2d = original
    return total[0] / 1e9


def build(name: str, batch: int, device: str = "cpu") -> tuple[Config, SDMUNet, torch.Tensor]:
    preset, overrides = CONFIGS[name]
    cfg = resolve(preset=preset, overrides=overrides, params=None)
    torch.manual_seed(0)
    model = SDMUNet(cfg.model).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised convs too, so outputs are not trivially zero
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    h, w = cfg.model.image_size
    coarse = torch.randint(0, cfg.model.num_classes, (batch, h // 8, w // 8), generator=g)
    label = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return cfg, model.to(device), make_segmap(label, None, cfg.model).to(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time


@torch.no_grad()
def measure_steps(model: SDMUNet, segmap: torch.Tensor, repeats: int, steps: int) -> dict:
    """Best-of timings (s) of one plain guided step, one of ours, and our cache build."""
    n = segmap.shape[0]
    x = torch.randn(n, 3, *segmap.shape[-2:], generator=torch.Generator().manual_seed(1)).to(segmap.device)
    ts = [torch.full((n,), t, device=segmap.device) for t in (999, 500, 250, 100, 50, 10)]
    plain = GuidedDenoiser(model, segmap, GUIDANCE, batched_cfg=False, use_spade_cache=False)
    plain(x, ts[0])  # warm-up (allocator, kernel selection)
    GuidedDenoiser(model, segmap, GUIDANCE)(x, ts[0])
    best = {"plain_step": float("inf"), "our_step": float("inf"), "cache": float("inf")}
    best["plain_gflop"] = conv_gflop(lambda: plain(x, ts[0]))
    best["our_gflop"] = conv_gflop(lambda: GuidedDenoiser(model, segmap, GUIDANCE)(x, ts[0]))
    best["cache_gflop"] = conv_gflop(lambda: GuidedDenoiser(model, segmap, GUIDANCE))
    best["our_gflop"] -= best["cache_gflop"]
    for r in range(repeats):
        start = CLOCK()
        ours = GuidedDenoiser(model, segmap, GUIDANCE)  # builds the SPADE cache
        best["cache"] = min(best["cache"], CLOCK() - start)
        for k in range(steps):
            t = ts[(r * steps + k) % len(ts)]
            for key, denoiser in (("plain_step", plain), ("our_step", ours)):
                start = CLOCK()
                denoiser(x, t)
                best[key] = min(best[key], CLOCK() - start)
        ours = None  # frees the cache before the next one is built
    return best


@torch.no_grad()
def measure_full(cfg: Config, model: SDMUNet, segmap: torch.Tensor, steps: int, repeats: int) -> dict:
    """Best-of wall time (s) of whole dpmpp sample_loop calls, plain vs ours, interleaved."""
    diffusion = GaussianDiffusion(cfg.diffusion, cfg.model.learn_sigma)
    best = {"plain_full": float("inf"), "our_full": float("inf")}
    for _ in range(repeats):
        for key, fast in (("plain_full", False), ("our_full", True)):
            start = CLOCK()
            sample_loop(model, diffusion, segmap, sampler="dpmpp", steps=steps, guidance_scale=GUIDANCE,
                        generator=torch.Generator().manual_seed(0), batched_cfg=fast, use_spade_cache=fast)
            best[key] = min(best[key], CLOCK() - start)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="toy,toy64,toy64-ade,ade20k")
    ap.add_argument("--batch", type=int, default=1, help="label maps per sampling call (N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps-measured", type=int, default=2, help="guided steps timed per repetition")
    ap.add_argument("--steps", type=int, default=25, help="S for seconds per image (sample.steps default)")
    ap.add_argument("--full", default="toy,toy64,toy64-ade", help="configs also timed as whole sample_loop calls")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (with --threads 1: robust to other jobs on a "
                         "shared machine)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default="fp32,bf16,channels-last,compiled,bf16+channels-last",
                    help="speed levers timed on our guided step ('' for none)")
    ap.add_argument("--variant-configs", default="toy,toy64-ade,ade20k", help="configs the variants run at")
    ap.add_argument("--peak-json", type=Path, default=None, help="benchmarks/peak.py --json output")
    ap.add_argument("--skip-plain", action="store_true", help="only the variants (no plain-vs-ours timing)")
    args = ap.parse_args()
    peak = json.loads(args.peak_json.read_text()) if args.peak_json else None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, {args.clock} clock, "
          f"load avg {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    for name in args.configs.split(","):
        cfg, model, segmap = build(name, args.batch, args.device)
        n = args.batch
        per_row = spade_cache_bytes_per_row(model.spade_norms, *cfg.model.image_size, 4)
        print(f"{name}: SPADE cache per label map (guided: [cond; null] rows) fp32 {2 * per_row / 2**20:.1f} MiB, "
              f"bf16 {per_row / 2**20:.1f} MiB", flush=True)
        if name in args.variant_configs.split(",") and args.variants:
            results[f"{name}/variants"] = measure_variants(
                model, segmap, args.variants.split(","), repeats=args.repeats, steps=args.steps_measured,
                per_image_steps=args.steps, peak=peak, clock=CLOCK, conv_gflop=conv_gflop, guidance=GUIDANCE,
                label=name)
        if args.skip_plain:
            del model, segmap
            continue
        r = measure_steps(model, segmap, args.repeats, args.steps_measured)
        s = args.steps
        r["plain_per_image"] = s * r["plain_step"] / n
        r["our_per_image"] = (r["cache"] + s * r["our_step"]) / n
        r["step_speedup"] = r["plain_step"] / r["our_step"]
        r["image_speedup"] = r["plain_per_image"] / r["our_per_image"]
        if name in args.full.split(","):
            r.update(measure_full(cfg, model, segmap, s, args.repeats))
            r["full_speedup"] = r["plain_full"] / r["our_full"]
        results[name] = r
        r["flop_ceiling"] = r["plain_gflop"] / r["our_gflop"]
        line = (f"{name}: per guided step plain {r['plain_step']:.4f} s, ours {r['our_step']:.4f} s "
                f"({r['step_speedup']:.2f}x; conv GFLOP {r['plain_gflop']:.2f} vs {r['our_gflop']:.2f}: "
                f"{r['flop_ceiling']:.2f}x); cache {r['cache']:.4f} s ({r['cache_gflop']:.2f} GFLOP); "
                f"per image at {s} steps plain "
                f"{r['plain_per_image']:.3f} s, ours {r['our_per_image']:.3f} s ({r['image_speedup']:.2f}x)")
        if "full_speedup" in r:
            line += (f"; whole sample_loop ({s} dpmpp steps, batch {n}) plain {r['plain_full']:.3f} s, "
                     f"ours {r['our_full']:.3f} s ({r['full_speedup']:.2f}x)")
        print(line, flush=True)
        del model, segmap
    print(f"# load avg at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
