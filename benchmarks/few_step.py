"""Few-step sampling figures (issue 20): checkpoints x samplers at a few steps, on the same val label maps.

Each ``--row NAME=CHECKPOINT:SAMPLER:STEPS[:ETA]`` is evaluated through ``sdm.eval.runner.run_evaluation`` on
the same val label maps, seeds, guidance scale and ``--repeats`` samples per map (the sampler, steps and eta
given explicitly, so a student runs what the row names, not its own default). One table: mIoU, FSD, KID (+-
std over subsets), feature diversity (mean pairwise distance of the segmenter features of one map's repeats),
network passes per image and seconds per image from the evaluation. A rerun reuses a row whose output folder
holds the same checkpoint, sampler, steps, eta, scale and repeats. ``--timing-maps N`` then times each row's
``generate`` on the first N val label maps in one batch, one torch thread, rows one after another in this
process (one warm-up call each), with the ratio to the first row: comparable figures on a shared machine.

    cd <project with runs/>; python benchmarks/few_step.py --data data/prepared/synthetic --repeats 3 \\
        --row "teacher sde:25=runs/teacher/final:dpmpp-sde:25" \\
        --row "student renoise:8=runs/distill/final:renoise:8" --out runs/few-step
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdm.config import Config, resolve  # noqa: E402
from sdm.eval.runner import EvalRequest, run_evaluation  # noqa: E402

METRICS = ("miou", "fsd", "kid", "kid_std", "feature_diversity", "seconds_per_image")


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    checkpoint: Path
    sampler: str
    steps: int
    eta: float

    @classmethod
    def parse(cls, spec: str) -> Row:
        name, _, rest = spec.partition("=")
        parts = rest.split(":")
        if not name or len(parts) not in (3, 4) or not parts[2].isdigit():
            raise SystemExit(f"--row {spec!r}: expected NAME=CHECKPOINT:SAMPLER:STEPS[:ETA]")
        eta = float(parts[3]) if len(parts) == 4 else 0.0
        return cls(name, Path(parts[0]), parts[1], int(parts[2]), eta)

    def passes(self, student: bool) -> int:
        """Network passes per image: a guided teacher step is a conditional and a null pass."""
        return self.steps * (1 if student else 2)


def evaluate(row: Row, config: Config, data: Path, out: Path, scale: float, repeats: int) -> dict:
    ev = dataclasses.replace(config.evaluate, sampler=row.sampler, steps=row.steps, eta=row.eta,
                             guidance_scales=[scale], repeats=repeats, num_samples=0)
    cfg = dataclasses.replace(config, evaluate=ev)
    metrics = None
    try:
        info = json.loads((out / "evaluation.json").read_text())
        if (info.get("checkpoint"), info.get("sampler"), info.get("steps"), info.get("guidance_scales")) == (
                str(row.checkpoint.resolve()), row.sampler, row.steps, [scale]) and \
                info.get("eta") == row.eta and info.get("repeats") == repeats:
            metrics = json.loads((out / "metrics.json").read_text())
            print(f"  reusing {out}", flush=True)
    except (OSError, ValueError):
        pass
    if metrics is None:
        metrics = run_evaluation(EvalRequest(checkpoint=row.checkpoint, data=data, out=out, log_mlflow=False,
                                             overwrite=True, sampling_given=("sampler", "steps", "eta")),
                                 cfg, log=lambda m: print(f"  {m}", flush=True))
    g = f"{scale:g}"
    return {k: metrics.get(f"{k}@{g}") for k in METRICS}


def timings(rows: list[Row], data: Path, maps: int, scale: float) -> list[float]:
    """Seconds per image of each row: ``generate`` on ``maps`` val label maps in one batch, one thread."""
    import time

    import torch

    from sdm.eval.segmenter_train import load_split_arrays
    from sdm.model import load_checkpoint
    from sdm.sampling import generate

    torch.set_num_threads(1)
    real = load_split_arrays(data, "val", maps)
    out = []
    for row in rows:
        model, cfg = load_checkpoint(row.checkpoint)

        def run(n: int, model=model, cfg=cfg, row=row) -> None:
            inst = real["instances"][:n] if real["instances"] is not None else None
            generate(model, cfg, real["labels"][:n], inst, guidance_scale=scale, sampler=row.sampler,
                     steps=row.steps, eta=row.eta, seed=0, batch_size=n, precision=cfg.sample.precision)

        run(1)  # warm-up
        start = time.perf_counter()
        run(len(real["ids"]))
        out.append((time.perf_counter() - start) / len(real["ids"]))
    return out


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--row", action="append", required=True, help="NAME=CHECKPOINT:SAMPLER:STEPS[:ETA]")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/few-step"))
    ap.add_argument("--timing-maps", type=int, default=0, help="label maps of the one-thread timing (0: skip)")
    args = ap.parse_args()
    rows = [Row.parse(spec) for spec in args.row]
    config = resolve(overrides=[f"data.prepared={args.data}"])
    print(f"load average {os.getloadavg()}", flush=True)
    table = []
    for i, row in enumerate(rows):
        print(f"{row.name}: {row.checkpoint} {row.sampler}:{row.steps} eta {row.eta:g}", flush=True)
        m = evaluate(row, config, args.data, args.out / f"row-{i:02d}", args.guidance, args.repeats)
        student = json.loads((row.checkpoint / "config.json").read_text())["model"].get("guidance_embed", False)
        table.append((row, m, row.passes(student)))
    print(f"\nguidance {args.guidance:g}, {args.repeats} samples per val label map; load {os.getloadavg()}\n")
    print("| row | sampler:steps (eta) | passes / image | mIoU | FSD | KID (+- std) | feature diversity | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for row, m, passes in table:
        kid = _cell(m["kid"], 4) + (f" +- {m['kid_std']:.4f}" if m["kid_std"] is not None else "")
        eta = f" ({row.eta:g})" if row.sampler in ("ddim", "distilled") else ""
        print(f"| {row.name} | {row.sampler}:{row.steps}{eta} | {passes} | {_cell(m['miou'])} | {_cell(m['fsd'])} | "
              f"{kid} | {_cell(m['feature_diversity'], 4)} | {_cell(m['seconds_per_image'], 4)} |")
    if args.timing_maps:
        seconds = timings(rows, args.data, args.timing_maps, args.guidance)
        print(f"\nseconds per image, one thread, {args.timing_maps} label maps in one batch; load {os.getloadavg()}\n")
        print("| row | sampler:steps | s / image | x first row |")
        print("|---|---|---|---|")
        for row, t in zip(rows, seconds, strict=True):
            print(f"| {row.name} | {row.sampler}:{row.steps} | {t:.4f} | {t / seconds[0]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
