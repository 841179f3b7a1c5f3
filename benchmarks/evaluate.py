"""Evaluation figures for RESULTS.md: guidance 1.0 vs 1.5 and the sampler/steps sweep.

Trains nothing. Evaluates a trained checkpoint on a prepared split with
``sdm.eval.runner.run_evaluation`` and prints two tables plus the two checks
recorded in RESULTS.md:

- the paper's claim: guidance above 1 raises semantic consistency (mIoU);
- ours: a 25-step solver (dpmpp, deterministic; dpmpp-sde, stochastic) is within 5% of ddpm at
  1000 steps on mIoU and FSD (and whether it is better or worse).

    python benchmarks/evaluate.py --checkpoint runs/<run>/final --data data/prepared/synthetic

Without ``--checkpoint`` it uses the newest ``<train.storage_path>/*/final``;
with none there it says so and exits 0 (``make bench`` on a fresh checkout).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdm.config import resolve  # noqa: E402
from sdm.eval.runner import EvalRequest, default_device, run_evaluation  # noqa: E402
from sdm.eval.sweep import format_scale, parse_pairs, parse_scales  # noqa: E402

METRICS = ("miou", "fsd", "feature_diversity", "fid", "kid", "kid_std", "seconds_per_image")


def _newest_final(storage: Path) -> Path | None:
    finals = [p for p in storage.glob("*/final") if (p / "config.json").is_file()]
    return max(finals, key=lambda p: p.stat().st_mtime) if finals else None


def _cell(metrics: dict, key: str) -> str:
    v = metrics.get(key)
    return "skipped" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-evaluate")
    ap.add_argument("--split", default="val")
    ap.add_argument("--guidance", default="1.0,1.5")
    ap.add_argument("--sweep", default="ddpm:1000,ddim:50,dpmpp:25,dpmpp:15,dpmpp-sde:25,dpmpp-sde:15")
    ap.add_argument("--num-samples", type=int, default=0, help="0 = the whole split")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra section.key=value overrides")
    args = ap.parse_args()

    scales = parse_scales(args.guidance)
    pairs = parse_pairs([args.sweep])
    overrides = [
        f"evaluate.guidance_scales={json.dumps(scales)}",
        f"evaluate.steps_sweep={json.dumps([f'{s}:{k}' for s, k in pairs])}",
        f"evaluate.split={args.split}", f"evaluate.num_samples={args.num_samples}",
        f"evaluate.repeats={args.repeats}",
        # The steps sweep runs at the last (highest) guidance scale given: 1.5, the paper's.
        f"sample.guidance_scale={scales[-1]}",
        *args.sets,
    ]
    cfg = resolve(overrides=overrides, params=args.params)
    checkpoint = args.checkpoint or _newest_final(REPO / cfg.train.storage_path)
    if checkpoint is None:
        print(f"skipped: no trained checkpoint under {REPO / cfg.train.storage_path}/*/final; "
              "train the demo model first or pass --checkpoint")
        return 0
    data = args.data or REPO / cfg.data.prepared
    device = default_device() if args.device == "auto" else args.device
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, "
          f"torch {torch.__version__}")
    print(f"checkpoint {checkpoint}, data {data} ({args.split}), repeats {args.repeats}")
    req = EvalRequest(checkpoint=checkpoint, data=data, out=args.out, steps_sweep=True, log_mlflow=False,
                      device=device)
    m = run_evaluation(req, cfg, log=lambda s: print(s, file=sys.stderr))

    print(f"\nsegmenter mIoU on real {args.split} images (ceiling): {m['segmenter_miou_real']:.4f}; "
          f"{m['num_images']} label maps x {m['repeats']} samples")
    floor = {k: m.get(f"real_floor/{k}") for k in ("fid", "kid", "kid_std")}
    print("real-vs-real floor (two disjoint halves of the split): " +
          ", ".join(f"{k} {_cell(m, f'real_floor/{k}')}" for k in floor) +
          "".join(f"\n  {k}: skipped ({m['skipped'][f'real_floor/{k}']})" for k in floor
                  if floor[k] is None and f"real_floor/{k}" in m["skipped"]))
    print(f"\nguidance ({cfg.evaluate.sampler}:{cfg.evaluate.steps})")
    print("| guidance | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for s in scales:
        g = format_scale(s)
        print(f"| {g} | " + " | ".join(_cell(m, f"{k}@{g}") for k in METRICS) + " |")
    g = format_scale(scales[-1])
    print(f"\nsteps sweep at guidance {g}")
    print("| sampler:steps | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for s, k in pairs:
        print(f"| {s}:{k} | " + " | ".join(_cell(m, f"steps/{s}:{k}/{x}") for x in METRICS) + " |")

    lo, hi = format_scale(scales[0]), format_scale(scales[-1])
    if len(scales) > 1:
        up = m[f"miou@{hi}"] > m[f"miou@{lo}"]
        print(f"\nclaim (paper): mIoU@{hi} > mIoU@{lo}: {m[f'miou@{hi}']:.4f} vs {m[f'miou@{lo}']:.4f} -> "
              f"{'holds' if up else 'does not hold'}")
    better = {"miou": 1, "fsd": -1}  # higher mIoU, lower FSD is better
    for fast_sampler in ("dpmpp", "dpmpp-sde"):
        if ("ddpm", 1000) not in pairs or (fast_sampler, 25) not in pairs:
            continue
        for x, sign in better.items():
            ref, fast = m.get(f"steps/ddpm:1000/{x}"), m.get(f"steps/{fast_sampler}:25/{x}")
            if ref is None or fast is None:
                print(f"claim (ours): {fast_sampler}:25 {x}: skipped")
                continue
            rel = (fast - ref) / abs(ref) if ref else float("inf")
            verdict = "within 5%" if abs(rel) <= 0.05 else "better by more than 5%" if sign * rel > 0 else \
                "WORSE by more than 5%"
            print(f"claim (ours): {fast_sampler}:25 {x} {fast:.4f} vs ddpm:1000 {ref:.4f}: {100 * rel:+.1f}% -> "
                  f"{verdict}")
    g = format_scale(scales[-1])
    for k in ("fid", "kid"):
        if f"{k}@{g}" in m["skipped"]:
            print(f"{k}@{g}: skipped ({m['skipped'][f'{k}@{g}']})")
    print(f"\nfull outputs: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
