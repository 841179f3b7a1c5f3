"""benchmarks/sampling.py's speed levers: our guided step under fp32 eager, bf16, channels-last, compile.

Each variant builds our denoiser (batched guidance + SPADE cache, in the variant's precision) and times
one guided step, best of ``repeats * steps``; fp32 eager is the baseline of the speed-ups. A compiled
variant's first call (the compile, paid once per process and shape) is reported apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdm.compiled import channels_last, compiled
from sdm.diffusion import GuidedDenoiser
from sdm.precision import bf16_native

VARIANTS = {  # name -> (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "channels-last": ("fp32", True, False),
    "compiled": ("fp32", False, True),
    "bf16+channels-last": ("bf16", True, False),
    "bf16+compiled": ("bf16", False, True),
    "bf16+channels-last+compiled": ("bf16", True, True),
}


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; the memory held now (the baseline of the peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _rss_bytes("VmRSS")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _rss_bytes("VmHWM")


@torch.no_grad()
def measure_variants(model: Any, segmap: torch.Tensor, names: list[str], *, repeats: int, steps: int,
                     per_image_steps: int, peak: dict | None, clock: Callable[[], float],
                     conv_gflop: Callable[[Callable[[], object]], float], guidance: float, label: str) -> dict:
    """Figures per variant: step s, speed-up over fp32 eager, GFLOP/s, fraction of peak, memory, compile s."""
    device = segmap.device
    n = segmap.shape[0]
    x = torch.randn(n, 3, *segmap.shape[-2:], generator=torch.Generator().manual_seed(1)).to(device)
    ts = [torch.full((n,), t, device=device) for t in (999, 500, 250, 100, 50, 10)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    gflop = conv_gflop(lambda: GuidedDenoiser(model, segmap, guidance)(x, ts[0]))
    gflop -= conv_gflop(lambda: GuidedDenoiser(model, segmap, guidance))
    out: dict[str, dict] = {}
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; expected some of {', '.join(VARIANTS)}")
        precision, cl, comp = VARIANTS[name]
        r: dict[str, Any] = {"precision": precision, "channels_last": cl, "compile": comp}
        with channels_last(model, cl):
            base = _reset_peak(device)
            net = compiled(model) if comp else model
            start = clock()
            denoiser = GuidedDenoiser(net, segmap, guidance, precision=precision)
            sync()
            r["cache_s"] = clock() - start
            r["cache_bytes_per_label_map"] = denoiser.cache_nbytes / n
            start = time.perf_counter()
            denoiser(x, ts[0])  # warm-up; for a compiled forward this is the compile
            sync()
            r["first_call_s"] = time.perf_counter() - start
            best = float("inf")
            for k in range(repeats * steps):
                start = clock()
                denoiser(x, ts[k % len(ts)])
                sync()
                best = min(best, clock() - start)
            r["peak_bytes_per_image"] = (_peak(device) - base) / n
            del denoiser
        r["step_s"] = best
        r["per_image_s"] = (r["cache_s"] + per_image_steps * best) / n
        r["gflops"] = gflop / best
        peak_key = "peak_bf16_gflops" if precision == "bf16" else "peak_fp32_gflops"
        r["fraction_of_peak"] = r["gflops"] / peak[peak_key] if peak else None
        out[name] = r
    base_step = out["fp32"]["step_s"] if "fp32" in out else None
    for name, r in out.items():
        r["speedup"] = base_step / r["step_s"] if base_step else None
        frac = f"{r['fraction_of_peak']:.0%} of peak" if r["fraction_of_peak"] is not None else "peak not given"
        speed = f"{r['speedup']:.2f}x vs fp32 eager" if r["speedup"] else ""
        comp = f"; first call (compile) {r['first_call_s']:.1f} s" if r["compile"] else ""
        print(f"{label} [{name}]: guided step {r['step_s']:.4f} s ({speed}), per image at {per_image_steps} steps "
              f"{r['per_image_s']:.3f} s, {r['gflops']:.1f} GFLOP/s ({frac}), SPADE cache "
              f"{r['cache_bytes_per_label_map'] / 2**20:.1f} MiB per label map, peak memory "
              f"{r['peak_bytes_per_image'] / 2**20:.0f} MiB per image{comp}", flush=True)
    if not bf16_native(device) and any(r["precision"] == "bf16" for r in out.values()):
        print(f"{label}: note: bf16 is not native on {device} here (emulated)", flush=True)
    return {"conv_gflop_per_step": gflop, **out}
