"""Guided distillation figures for RESULTS.md (issue 20): the student at 8 and 4 steps against its teacher.

Distils a teacher checkpoint with ``sdm.distill.run.distill`` (or reuses a finished run folder: a rerun
resumes or skips), then evaluates with ``sdm.eval.runner.run_evaluation`` on the same val label maps and
seeds, at one guidance scale:

- the student at ``distilled:4`` (the run's final) and ``distilled:8`` (the halving round whose student
  samples in 8 steps, ``halve-16/final``, when the run went through it);
- the stage-one student on its own grid (``distilled:<start_steps>``) and the teacher at ``ddim:8`` / ``ddim:K``
  (the same few deterministic steps, not distilled): where the quality goes;
- the teacher at ``dpmpp-sde:25`` (the toy default) and ``ddpm:1000`` (the official sampler; on
  ``--ddpm-maps`` label maps only, as it takes seconds per image on a CPU).

It prints one table (mIoU, FSD, KID when computed, s / image, network evaluations per image), then seconds per
image timed one after another in this process on one thread (``--timing-maps``; the evaluations' own timings
depend on the load of the moment), and the issue's check: 8 student steps within 5% of the teacher's
dpmpp-sde:25 mIoU at a third of its time per image or less. A rerun reuses the evaluations already in ``--out``
(same checkpoint, sampler, steps and scale) and the finished distillation.

    python benchmarks/distill.py --teacher runs/<demo run>/final --data data/prepared/synthetic \\
        --steps 4 --start-steps 32 --run-name bench-distill [--local]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdm.config import Config, resolve  # noqa: E402
from sdm.eval.runner import EvalRequest, run_evaluation  # noqa: E402

METRICS = ("miou", "fsd", "kid", "kid_std", "seconds_per_image")


def _evaluate(checkpoint: Path, config: Config, data: Path, out: Path, *, sampler: str, steps: int, scale: float,
              maps: int) -> dict:
    ev = dataclasses.replace(config.evaluate, sampler=sampler, steps=steps, guidance_scales=[scale],
                             num_samples=maps, repeats=1)
    cfg = dataclasses.replace(config, evaluate=ev, sample=dataclasses.replace(config.sample, guidance_scale=scale))
    metrics = _done(out, checkpoint, sampler, steps, scale)
    if metrics is None:
        # sampling_given: the sampler and steps asked here, not the student checkpoint's own.
        metrics = run_evaluation(EvalRequest(checkpoint=checkpoint, data=data, out=out, log_mlflow=False,
                                             overwrite=True, sampling_given=("sampler", "steps")),
                                 cfg, log=lambda m: print(f"  {m}", flush=True))
    g = f"{scale:g}"
    return {k: metrics.get(f"{k}@{g}") for k in METRICS} | {"skipped": {k: v for k, v in metrics["skipped"].items()
                                                                         if k.endswith(f"@{g}")}}


def _done(out: Path, checkpoint: Path, sampler: str, steps: int, scale: float) -> dict | None:
    """metrics.json of an earlier run of this script with the same checkpoint, sampler, steps and scale (a rerun
    after a fix does not sample ddpm:1000 again), else None."""
    try:
        info = json.loads((out / "evaluation.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = (info.get("checkpoint") == str(checkpoint.resolve()) and info.get("sampler") == sampler
            and info.get("steps") == steps and info.get("guidance_scales") == [scale])
    if same:
        print(f"  reusing {out} ({sampler}:{steps})", flush=True)
    return metrics if same else None


def _timings(pairs: list[tuple[str, Path, str, int, int]], data: Path, maps: int, scale: float) -> list[tuple]:
    """Seconds per image of each (name, checkpoint, sampler, steps, repeat factor), one after another in this
    process, on one torch thread, for the first ``maps`` val label maps in one batch: comparable figures on a
    shared machine (the evaluations above ran under varying load). ``repeat factor`` > 1: the sampler was timed
    at steps / factor (same per-step cost: ddpm's) and the time multiplied."""
    from sdm.eval.segmenter_train import load_split_arrays
    from sdm.model import load_checkpoint
    from sdm.sampling import generate

    real = load_split_arrays(data, "val", maps)
    out = []
    for name, ckpt, sampler, steps, factor in pairs:
        model, cfg = load_checkpoint(ckpt)
        run = steps // factor
        generate(model, cfg, real["labels"][:1], real["instances"][:1] if real["instances"] is not None else None,
                 guidance_scale=scale, sampler=sampler, steps=min(run, 2), seed=0)  # warm-up, not timed
        start = time.perf_counter()
        generate(model, cfg, real["labels"], real["instances"], guidance_scale=scale, sampler=sampler, steps=run,
                 seed=0, batch_size=maps)
        spi = (time.perf_counter() - start) * factor / len(real["ids"])
        out.append((name, spi, os.getloadavg()[0]))
        print(f"  timing {name}: {spi:.4f} s / image", flush=True)
    return out


def _cell(v: object, digits: int = 3) -> str:
    return "skipped" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4, help="distill.steps of the run (the final student's)")
    ap.add_argument("--start-steps", type=int, default=32)
    ap.add_argument("--run-name", default="bench-distill")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more config overrides")
    ap.add_argument("--local", action="store_true", help="distil in this process (no Ray)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--maps", type=int, default=0, help="val label maps (0: all)")
    ap.add_argument("--ddpm-maps", type=int, default=16, help="label maps for the teacher at ddpm:1000 (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-distill-eval"))
    ap.add_argument("--timing-maps", type=int, default=8, help="label maps of the one-thread timing (0: skip)")
    args = ap.parse_args()

    from sdm.distill.run import distill

    config = resolve(overrides=[f"data.prepared={args.data}", f"distill.steps={args.steps}",
                                f"distill.start_steps={args.start_steps}", *args.sets])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; load average {os.getloadavg()}", flush=True)
    started = time.perf_counter()
    result = distill(config, teacher=str(args.teacher), run_name=args.run_name, local=args.local,
                     log_mlflow=False)
    print(f"distillation: {time.perf_counter() - started:.0f} s in this call; stages {json.dumps(result.stages)}; "
          f"recorded wall time {result.wall_time_s} s; load average {os.getloadavg()}", flush=True)

    rows: list[tuple[str, int, dict]] = []
    students = [(result.final_dir, args.steps)]
    eight = result.run_dir / "halve-16" / "final"
    if args.steps != 8 and (eight / "config.json").is_file():
        students.insert(0, (eight, 8))
    for ckpt, k in students:
        print(f"student distilled:{k} ({ckpt})", flush=True)
        rows.append((f"student distilled:{k}", k, _evaluate(ckpt, config, args.data, args.out / f"student-{k}",
                                                            sampler="distilled", steps=k, scale=args.guidance,
                                                            maps=args.maps)))
    # Where the quality goes: stage one's student on its own grid (start_steps), and the teacher at the same
    # few deterministic steps without distillation (ddim, two passes per step).
    one = result.run_dir / "guidance" / "final"
    rows.append((f"stage-one student distilled:{args.start_steps}", args.start_steps, _evaluate(
        one, config, args.data, args.out / "stage-one", sampler="distilled", steps=args.start_steps,
        scale=args.guidance, maps=args.maps)))
    for k in sorted({8, args.steps}, reverse=True):
        rows.append((f"teacher ddim:{k} (not distilled)", 2 * k, _evaluate(
            args.teacher, config, args.data, args.out / f"teacher-ddim{k}", sampler="ddim", steps=k,
            scale=args.guidance, maps=args.maps)))
    print("teacher dpmpp-sde:25", flush=True)
    rows.append(("teacher dpmpp-sde:25", 50, _evaluate(args.teacher, config, args.data, args.out / "teacher-sde25",
                                                       sampler="dpmpp-sde", steps=25, scale=args.guidance,
                                                       maps=args.maps)))
    if args.ddpm_maps:
        print(f"teacher ddpm:1000 on {args.ddpm_maps} label maps", flush=True)
        rows.append((f"teacher ddpm:1000 ({args.ddpm_maps} maps)", 2000, _evaluate(
            args.teacher, config, args.data, args.out / "teacher-ddpm1000", sampler="ddpm", steps=1000,
            scale=args.guidance, maps=args.ddpm_maps)))
        if args.maps != args.ddpm_maps:  # the same maps for a paired view of the official sampler
            for ckpt, k in students:
                rows.append((f"student distilled:{k} ({args.ddpm_maps} maps)", k, _evaluate(
                    ckpt, config, args.data, args.out / f"student-{k}-{args.ddpm_maps}", sampler="distilled",
                    steps=k, scale=args.guidance, maps=args.ddpm_maps)))
            rows.append((f"teacher dpmpp-sde:25 ({args.ddpm_maps} maps)", 50, _evaluate(
                args.teacher, config, args.data, args.out / f"teacher-sde25-{args.ddpm_maps}", sampler="dpmpp-sde",
                steps=25, scale=args.guidance, maps=args.ddpm_maps)))

    print(f"\nguidance {args.guidance:g}; load average {os.getloadavg()}\n")
    print("| sampler | network evaluations / image | mIoU | FSD | KID | s / image |")
    print("|---|---|---|---|---|---|")
    for name, passes, m in rows:
        kid = _cell(m["kid"], 4) + (f" +- {m['kid_std']:.4f}" if m["kid_std"] is not None else "")
        print(f"| {name} | {passes} | {_cell(m['miou'])} | {_cell(m['fsd'])} | {kid} | "
              f"{_cell(m['seconds_per_image'], 3)} |")
    # FID (under evaluate.min_fid_samples) and diversity (repeats 1) are skipped everywhere: only KID's skips say
    # something row-specific.
    skipped = {f"{name}: {k}": v for name, _, m in rows for k, v in m["skipped"].items() if k.startswith("kid@")}
    for k, v in sorted(skipped.items()):
        print(f"- skipped {k}: {v}")
    timing = []
    if args.timing_maps:
        torch.set_num_threads(1)
        pairs = [(f"student distilled:{k}", ckpt, "distilled", k, 1) for ckpt, k in students]
        pairs += [("teacher ddim:8", args.teacher, "ddim", 8, 1),
                  ("teacher dpmpp-sde:25", args.teacher, "dpmpp-sde", 25, 1),
                  ("teacher ddpm:1000 (timed at 100 steps x 10)", args.teacher, "ddpm", 1000, 10)]
        timing = _timings(pairs, args.data, args.timing_maps, args.guidance)
        print(f"\nseconds per image, one thread, {args.timing_maps} label maps in one batch:\n")
        print("| sampler | s / image | x dpmpp-sde:25 | load average (1 min) |")
        print("|---|---|---|---|")
        ref = dict((n, t) for n, t, _ in timing)["teacher dpmpp-sde:25"]
        for n, t, load in timing:
            print(f"| {n} | {t:.4f} | {t / ref:.3f} | {load:.2f} |")
    by = {name: m for name, _, m in rows}
    student8, teacher = by.get("student distilled:8"), by["teacher dpmpp-sde:25"]
    if student8 is not None and student8["miou"] is not None and teacher["miou"] is not None:
        gap = student8["miou"] / teacher["miou"] - 1
        times = {n: t for n, t, _ in timing}
        speed = (times["student distilled:8"] / times["teacher dpmpp-sde:25"] if "student distilled:8" in times
                 else student8["seconds_per_image"] / teacher["seconds_per_image"])
        print(f"\ncheck: student at 8 steps, mIoU {gap:+.1%} vs the teacher's dpmpp-sde:25 "
              f"({'within' if gap >= -0.05 else 'NOT within'} 5%), time per image x{speed:.2f} "
              f"({'at most' if speed <= 1 / 3 else 'more than'} a third)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
