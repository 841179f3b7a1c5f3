"""Which floating-point precision a device runs natively, and the autocast context for it.

``bf16_native(device)`` is the one capability test: bf16 matmuls/convolutions run in
hardware (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX tiles). Elsewhere
bf16 is emulated and slower than fp32, so ``auto`` resolves to fp32 there. fp32 is
the exact path: no autocast at all.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_native() -> bool:
    """True where this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as torch and the kernel see it."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None and probe() for probe in probes):
        return True
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def bf16_native(device: torch.device | str) -> bool:
    """True where ``device`` runs bf16 convolutions/matmuls natively (so bf16 autocast pays)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device runs it natively, else ``fp32``; ``fp32``/``bf16`` as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def compute_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the resolved precision computes in: torch.bfloat16 or torch.float32."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else torch.float32


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a precision that resolves to bf16; no autocast (exact fp32) otherwise."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
