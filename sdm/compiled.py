"""The U-Net as sampling runs it: channels-last layout and ``torch.compile``, each only where it pays.

Both are off on the exact path (fp32 eager). ``auto`` takes each only where it was measured to pay
(benchmarks/RESULTS.md, "Inference at the hardware's limit"), and so far that is nowhere: on the
development CPU (AVX2, no native bf16) channels-last ran no faster than NCHW through oneDNN, and
compiling the paper-shaped U-Net costs many minutes of C++ builds per input shape (more than a whole
evaluation of the demo model). On CUDA neither has been measured yet (benchmarks/gpu_check.sh does):
a served model that compiled on its first request would also keep that request waiting for minutes.

A compiled forward is built once per model and process (``torch.compile`` caches its graphs per
input shape, dtype and autocast state); each first call of a new shape is the compile and is
recorded apart in ``COMPILE_LOG`` (seconds, shape), so callers can report what compiling cost.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

# One entry per compile paid in this process: {"shape": [...], "dtype": str, "autocast": bool, "seconds": float}.
COMPILE_LOG: list[dict[str, Any]] = []
_COMPILED: weakref.WeakKeyDictionary[nn.Module, CompiledUNet] = weakref.WeakKeyDictionary()
SETTINGS = ("auto", "true", "false")


def resolve_setting(value: bool | str, what: str, device: torch.device | str) -> bool:
    """``sample.compile`` / ``sample.channels_last`` (auto | true | false, or a bool) -> on or off for ``device``.

    auto = off on every device until a benchmark shows it pays there (see the module docstring).
    """
    if isinstance(value, bool):
        return value
    if value not in SETTINGS:
        raise ValueError(f"sample.{what} must be one of {', '.join(SETTINGS)}, got {value!r}")
    if value == "auto":
        torch.device(device)  # a bad device name fails here, as it will when sampling
        return False
    return value == "true"


class CompiledUNet:
    """``model`` with its forward through ``torch.compile``; what ``GuidedDenoiser`` needs of a model.

    ``__call__(x_t [N,3,H,W], t [N], segmap, spade_cache=None) -> [N, 6|3, H, W]`` as the model's forward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.shares_encoder = bool(getattr(model, "shares_encoder", False))
        self.guidance_embedded = bool(getattr(model, "guidance_embedded", False))
        self._forward = torch.compile(model)
        self._seen: set[tuple] = set()

    def spade_cache(self, segmap: Tensor) -> Any:
        return self.model.spade_cache(segmap)  # type: ignore[operator]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def __call__(self, x_t: Tensor, t: Tensor, segmap: Tensor | None, spade_cache: Any = None,
                 **guidance: Any) -> Tensor:
        """As the model's forward; ``guidance``: ``guidance_scale=w`` for a guidance-distilled student only."""
        autocast = torch.is_autocast_enabled(x_t.device.type)
        rows = spade_cache.segmap_shape[0] if spade_cache is not None else segmap.shape[0]  # type: ignore[union-attr]
        key = (tuple(x_t.shape), rows, x_t.dtype, autocast, spade_cache is None)
        if key in self._seen:
            return self._forward(x_t, t, segmap, spade_cache=spade_cache, **guidance)
        start = time.perf_counter()
        out = self._forward(x_t, t, segmap, spade_cache=spade_cache, **guidance)
        if x_t.device.type == "cuda":
            torch.cuda.synchronize(x_t.device)
        COMPILE_LOG.append({"shape": list(x_t.shape), "rows": rows, "dtype": str(x_t.dtype), "autocast": autocast,
                            "seconds": time.perf_counter() - start})
        self._seen.add(key)
        return out


def compiled(model: nn.Module) -> CompiledUNet:
    """The process-wide compiled forward of ``model`` (built on first use, kept while the model lives)."""
    found = _COMPILED.get(model)
    if found is None:
        found = _COMPILED[model] = CompiledUNet(model)
    return found


@contextlib.contextmanager
def channels_last(model: Any, enabled: bool) -> Iterator[None]:
    """Within the block the model's 4-D weights are channels-last (convolutions then run NHWC); restored after,
    so the exact fp32 path sees the contiguous layout again."""
    if not enabled or not isinstance(model, nn.Module):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
