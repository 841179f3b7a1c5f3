"""The public model API: ``SDMUNet`` and its checkpoint directory.

A checkpoint is a directory:

- ``model.safetensors``: the weights (``ema.safetensors`` beside it when an EMA copy exists);
- ``config.json``: the whole resolved ``sdm.config.Config``, so the diffusion
  and sampling settings travel with the weights;
- ``meta.json``: free-form facts (step, data_version, class_names, palette, ...), and under
  ``files_sha256`` the sha256 of the weights files, checked before they are read (a corrupted
  file is a ``ChecksumMismatchError`` naming it; checkpoints without the key load as before).

It is written to a temporary sibling directory and renamed into place, so a
reader never sees half a checkpoint. Nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdm.atomic import atomic_dir
from sdm.checksums import digests, verify_files
from sdm.config.load import ConfigError, from_dict, to_dict
from sdm.config.schema import Config
from sdm.nn.unet import ImageSizeError, SDMUNet
from sdm.state_dict_check import CheckpointError, check_state_dict

__all__ = [
    "CheckpointError", "ImageSizeError", "SDMUNet", "load_checkpoint", "read_checkpoint_config",
    "read_checkpoint_meta", "save_checkpoint",
]

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
# meta.json's key for the files' sha256: the checkpoint's own record, left out of read_checkpoint_meta.
SHA256_KEY = "files_sha256"


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(directory: str | Path, model_state: dict[str, torch.Tensor], config: Config,
                    ema_state: dict[str, torch.Tensor] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one); returns its path.

    The states are checked against ``SDMUNet(config.model)`` first (a
    ``CheckpointError`` names the key, the shape found and expected), so a
    checkpoint that could not be loaded is never written.
    """
    directory = Path(directory)
    with torch.device("meta"):
        reference = SDMUNet(config.model)
    check_state_dict(reference, model_state, "model_state", "config.model")
    if ema_state is not None:
        check_state_dict(reference, ema_state, "ema_state", "config.model")
    with atomic_dir(directory) as tmp:
        save_file(_plain(model_state), str(tmp / MODEL_FILE))
        if ema_state is not None:
            save_file(_plain(ema_state), str(tmp / EMA_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2))
        # The weights only: a flipped byte there loads silently; the JSON files are validated when read
        # (and config.json may be edited by hand, e.g. sampling settings).
        sha256 = digests(tmp, (MODEL_FILE, EMA_FILE))
        (tmp / META_FILE).write_text(json.dumps({**(meta or {}), SHA256_KEY: sha256}, indent=2, default=str))
    return directory


def _require_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint directory here (expected {MODEL_FILE} + {CONFIG_FILE})")


def read_checkpoint_config(directory: str | Path) -> Config:
    """The resolved ``Config`` stored in ``directory/config.json`` (errors name the file and key)."""
    directory = Path(directory)
    _require_dir(directory)
    path = directory / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a checkpoint directory holds {MODEL_FILE} + {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object of config sections")
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """The free-form ``meta.json`` of a checkpoint ({} when it has none), without the files' sha256."""
    meta = _read_meta(directory)
    meta.pop(SHA256_KEY, None)
    return meta


def recorded_sha256(directory: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` recorded when the checkpoint was written ({} for one written before)."""
    recorded = _read_meta(directory).get(SHA256_KEY) or {}
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{Path(directory) / META_FILE}: {SHA256_KEY} is not a JSON object")
    return recorded


def _read_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    _require_dir(directory)
    path = directory / META_FILE
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return meta


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a checkpoint directory holds {MODEL_FILE} + {CONFIG_FILE}")
    verify_files(path.parent, recorded_sha256(path.parent), [path.name])
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors: {e}") from None


def load_checkpoint(directory: str | Path, use_ema: bool = True,
                    device: str | torch.device = "cpu") -> tuple[SDMUNet, Config]:
    """(SDMUNet in eval mode on ``device``, its Config) from a checkpoint directory.

    Loads ``ema.safetensors`` when present and ``use_ema``, else ``model.safetensors``.
    Weights that do not fit ``config.json``'s model section raise ``CheckpointError``
    naming the weights file, the key, the shape found and expected.
    """
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    weights = directory / (EMA_FILE if use_ema and (directory / EMA_FILE).exists() else MODEL_FILE)
    state = _read_weights(weights)
    try:
        # Built on the meta device: no time spent on an initialisation the weights overwrite.
        with torch.device("meta"):
            model = SDMUNet(config.model)
    except ConfigError as e:
        raise ConfigError(f"{directory / CONFIG_FILE}: {e}") from None
    check_state_dict(model, state, str(weights), f"{directory / CONFIG_FILE} (model section)")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
    return model.to(device).eval(), config
