"""Stochastic few-step sampling of a guidance-distilled student (issue 20): does noise close the quality gap?

The students of ``benchmarks/distill.py`` sample with deterministic DDIM (eta 0) on ``grid(K)``, one pass per
step. This script evaluates the same checkpoints, on the same val label maps, seeds and guidance scale (through
``sdm.eval.runner.run_evaluation``, as ``benchmarks/distill.py`` does), with stochastic samplers of the same K
passes per image, each swapped in for ``distilled`` in this process only (``SAMPLERS["distilled"]``; the
checkpoints and the library are untouched):

- ``ddim-eta<e>``: DDIM with eta e on grid(K), fresh noise each step (``ddim_sample``);
- ``meng``: Meng et al.'s stochastic N-step sampling for distilled models (CVPR 2023, sec. 4.2): from grid
  index i, one deterministic DDIM step of twice the step length (to index i - 2, x_0 past the end), then a
  stochastic step back by one step length, z_{i-1} = sqrt(abar_{i-1} / abar_{i-2}) z_{i-2} +
  sqrt(1 - abar_{i-1} / abar_{i-2}) noise (the forward process); the last pass predicts x_0;
- ``dpmpp-sde``: SDE-DPM-Solver++(2M) on grid(K) with the student's x_0 predictions (``dpmpp_2m_sample``).

It prints one table (mIoU, FSD, KID, s / image from the evaluation) and seconds per image timed one after another
on one thread (8 label maps in one batch) with the ratio to the deterministic student's.

    cd <project with runs/>; python benchmarks/distill_stochastic.py --data data/prepared/synthetic \\
        --student 8=runs/bench-distill-k8/final --student 4=runs/bench-distill/final --out runs/stochastic-eval
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill import REPO, _cell, _evaluate  # noqa: E402

sys.path.insert(0, str(REPO))
from sdm.config import resolve  # noqa: E402
from sdm.diffusion import samplers  # noqa: E402
from sdm.diffusion.gaussian import GaussianDiffusion  # noqa: E402


def meng_stochastic_sample(denoise: Callable, process: GaussianDiffusion, x: Tensor, *, indices: Iterable[int],
                           draw_noise: Callable[[], Tensor], clip_denoised: bool = True) -> Tensor:
    """Meng et al.'s stochastic sampling on the student's grid: one pass per step (see the module docstring).

    x: x_T [N, 3, H, W]; indices: the grid's process indices, descending. Returns x_0 [N, 3, H, W].
    """
    abar = process.alphas_cumprod.tolist()
    for i in indices:
        t, out = samplers._denoise_at(denoise, process, x, i)
        x_start = process.p_mean_variance(out, x, t, clip_denoised=clip_denoised)["pred_x_start"]
        if i == 0:
            return x_start
        eps = process.predict_eps_from_x_start(x, t, x_start)
        # Two step lengths down (deterministic), then one back up with fresh noise: lands on index i - 1.
        far = abar[i - 2] if i >= 2 else 1.0
        z = x_start * math.sqrt(far) + math.sqrt(1 - far) * eps
        ratio = abar[i - 1] / far
        x = math.sqrt(ratio) * z + math.sqrt(1 - ratio) * draw_noise()
    return x


def _ddim_eta(eta: float) -> Callable:
    def sample(denoise: Callable, process: GaussianDiffusion, x: Tensor, *, indices: Iterable[int],
               draw_noise: Callable[[], Tensor], clip_denoised: bool = True) -> Tensor:
        return samplers.ddim_sample(denoise, process, x, indices=indices, eta=eta, draw_noise=draw_noise,
                                    clip_denoised=clip_denoised)
    return sample


def _sde(denoise: Callable, process: GaussianDiffusion, x: Tensor, *, indices: Iterable[int],
         draw_noise: Callable[[], Tensor], clip_denoised: bool = True) -> Tensor:
    return samplers.dpmpp_2m_sample(denoise, process, x, indices=indices, sde=True, draw_noise=draw_noise,
                                    clip_denoised=clip_denoised)


ORIGINAL = samplers.SAMPLERS["distilled"]
VARIANTS: dict[str, Callable] = {
    "ddim-eta0": ORIGINAL,
    "ddim-eta0.5": _ddim_eta(0.5),
    "ddim-eta1": _ddim_eta(1.0),
    "meng": meng_stochastic_sample,
    "dpmpp-sde": _sde,
}


def _timing(students: list[tuple[int, Path]], variants: list[str], data: Path, maps: int, scale: float) -> list:
    from sdm.eval.segmenter_train import load_split_arrays
    from sdm.model import load_checkpoint
    from sdm.sampling import generate

    real = load_split_arrays(data, "val", maps)
    rows = []
    for k, ckpt in students:
        model, cfg = load_checkpoint(ckpt)
        for name in variants:
            samplers.SAMPLERS["distilled"] = VARIANTS[name]
            run = partial(generate, model, cfg, guidance_scale=scale, sampler="distilled", steps=k, seed=0)
            run(real["labels"][:1], real["instances"][:1] if real["instances"] is not None else None)  # warm-up
            start = time.perf_counter()
            run(real["labels"], real["instances"], batch_size=maps)
            rows.append((k, name, (time.perf_counter() - start) / len(real["ids"]), os.getloadavg()[0]))
    samplers.SAMPLERS["distilled"] = ORIGINAL
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--student", action="append", required=True, help="K=checkpoint dir (repeatable)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, of {', '.join(VARIANTS)} (the timing always includes ddim-eta0)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--maps", type=int, default=0, help="val label maps (0: all)")
    ap.add_argument("--out", type=Path, default=Path("runs/stochastic-eval"))
    ap.add_argument("--timing-maps", type=int, default=8, help="label maps of the one-thread timing (0: skip)")
    args = ap.parse_args()

    students = []
    for spec in args.student:
        k, _, path = spec.partition("=")
        if not k.isdigit() or not (Path(path) / "config.json").is_file():
            raise SystemExit(f"--student {spec!r}: expected K=DIR with DIR/config.json")
        students.append((int(k), Path(path)))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected of {', '.join(VARIANTS)}")
    config = resolve(overrides=[f"data.prepared={args.data}"])
    print(f"load average {os.getloadavg()}", flush=True)
    rows = []
    for k, ckpt in students:
        for name in variants:
            print(f"student distilled:{k} with {name}", flush=True)
            samplers.SAMPLERS["distilled"] = VARIANTS[name]
            try:
                m = _evaluate(ckpt, config, args.data, args.out / f"student-{k}-{name}", sampler="distilled",
                              steps=k, scale=args.guidance, maps=args.maps)
            finally:
                samplers.SAMPLERS["distilled"] = ORIGINAL
            rows.append((k, name, m, os.getloadavg()[0]))
    print(f"\nguidance {args.guidance:g}; load average {os.getloadavg()}\n")
    print("| student | sampler on grid(K) | passes / image | mIoU | FSD | KID | s / image (eval) | load |")
    print("|---|---|---|---|---|---|---|---|")
    for k, name, m, load in rows:
        kid = _cell(m["kid"], 4) + (f" +- {m['kid_std']:.4f}" if m["kid_std"] is not None else "")
        print(f"| distilled:{k} | {name} | {k} | {_cell(m['miou'])} | {_cell(m['fsd'])} | {kid} | "
              f"{_cell(m['seconds_per_image'], 3)} | {load:.2f} |")
    if args.timing_maps:
        torch.set_num_threads(1)
        timed = _timing(students, ["ddim-eta0", *(v for v in variants if v != "ddim-eta0")], args.data,
                        args.timing_maps, args.guidance)
        print(f"\nseconds per image, one thread, {args.timing_maps} label maps in one batch:\n")
        print("| student | sampler | s / image | x ddim-eta0 | load (1 min) |")
        print("|---|---|---|---|---|")
        base = {k: t for k, name, t, _ in timed if name == "ddim-eta0"}
        for k, name, t, load in timed:
            ratio = f"{t / base[k]:.2f}" if k in base else "-"
            print(f"| distilled:{k} | {name} | {t:.4f} | {ratio} | {load:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
