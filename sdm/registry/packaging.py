"""What ships inside a registered model: the pyfunc file, the checkpoint files, the sdm code, requirements.

The model is self-contained: ``code_paths`` carries a clean copy of the ``sdm``
package, so ``mlflow models serve`` works without installing sdm; the
requirements pin the libraries the loaded model imports to the versions
registering ran with.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import sdm
from sdm.errors import InputError
from sdm.model import CONFIG_FILE, EMA_FILE, META_FILE, MODEL_FILE
from sdm.tracking import repo_root

PYFUNC_FILE = "sdm_pyfunc.py"

# Distributions the pyfunc imports when loaded (sdm.model, sdm.sampling, sdm.config and their imports).
# tests/test_registry_packaging.py checks this list against what loading really imports.
PYFUNC_DISTRIBUTIONS = ("mlflow", "torch", "safetensors", "numpy", "pandas", "pyyaml", "tqdm")

CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, CONFIG_FILE, META_FILE)


class PackagingError(InputError):
    """Something the registered model needs is missing; the message says what and where."""


def pyfunc_path() -> Path:
    """``<repo>/mlflow/sdm_pyfunc.py``, the model-from-code file."""
    path = repo_root() / "mlflow" / PYFUNC_FILE
    if not path.is_file():
        raise PackagingError(f"{path}: the pyfunc model file is missing; `sdm register` runs from a checkout of "
                             "the sdm repository, which holds mlflow/sdm_pyfunc.py")
    return path


def pip_requirements() -> list[str]:
    """``name==version`` for each of :data:`PYFUNC_DISTRIBUTIONS`, as installed here."""
    reqs = []
    for dist in PYFUNC_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(f"the model needs {dist}, which is not installed here; run `make setup`") from None
    return reqs


def stage_checkpoint(checkpoint_dir: Path, dst: Path) -> Path:
    """Copy the checkpoint's files (weights, config.json, meta.json) to ``dst/checkpoint``; nothing else."""
    out = dst / "checkpoint"
    out.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, out / name)
    return out


def stage_code(dst: Path) -> Path:
    """A clean copy of the ``sdm`` package (no caches) at ``dst/sdm``, for ``code_paths``."""
    src = Path(sdm.__file__).resolve().parent
    out = dst / "sdm"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
    return out
