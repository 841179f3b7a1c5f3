"""Load the official SDM release's weights (github.com/WeilunWang/semantic-diffusion-model).

The official checkpoints are plain state dicts whose keys are ``time_embed.*``,
``input_blocks.*``, ``middle_block.*``, ``output_blocks.*`` and ``out.*``.
``SDMUNet`` names its modules after the official ones, so the keys map one to
one; ``OFFICIAL_RENAMES`` is where a key that differs would be translated.
The attention qkv layout is the official default ("legacy" order: per head
q, k, v), which ``sdm.nn.attention`` reproduces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sdm.atomic import atomic_dir
from sdm.config.official import model_config_from_official_args
from sdm.config.schema import Config, ModelConfig
from sdm.model import save_checkpoint
from sdm.nn.unet import SDMUNet
from sdm.output_folders import CHECKPOINT, check_output_dir
from sdm.state_dict_check import CheckpointError, check_state_dict

# official key -> our key, for keys that differ (none: the module trees match).
OFFICIAL_RENAMES: dict[str, str] = {}


def official_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state dict with its keys translated to ``SDMUNet``'s."""
    return {OFFICIAL_RENAMES.get(k, k): v for k, v in state.items()}


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load(path, weights_only=True) of an official .pt; clear errors for anything but a state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: official checkpoint not found")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable state dict of tensors (torch.load with weights_only=True "
                              f"refused it: {str(e).splitlines()[0]})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of key -> tensor), got {type(state).__name__}")
    return dict(state)


def load_official_checkpoint(path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
                             config: ModelConfig, config_source: str = "the given ModelConfig") -> SDMUNet:
    """An ``SDMUNet(config)`` in eval mode holding the official weights (a .pt path or its state dict).

    Keys or shapes that do not fit ``config`` raise ``CheckpointError`` naming
    the file, the key, the shape found and expected (and ``config_source``).
    """
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        state = read_official_state(path_or_state_dict)
    else:
        source = "the official state dict"
        state = dict(path_or_state_dict)
    state = official_to_ours(state)
    with torch.device("meta"):
        model = SDMUNet(config)
    check_state_dict(model, state, source, config_source)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
    return model.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def official_flag_overrides(flags: Mapping[str, Any]) -> list[str]:
    """``--set``-style overrides (model.* and data.image_size) from the official scripts' flags.

    Flags not given take the official defaults (see ``sdm.config.official``).
    """
    model = model_config_from_official_args(dict(flags))
    sets = [f"model.{f.name}={json.dumps(getattr(model, f.name))}" for f in dataclasses.fields(model)]
    return [*sets, f"data.image_size={json.dumps(model.image_size)}"]


def convert_official(checkpoint: str | Path, config: Config, out: str | Path, *, overwrite: bool = False) -> Path:
    """Official .pt -> our checkpoint directory at ``out`` (model.safetensors + config.json + meta.json).

    The weights must fit ``config.model`` (``CheckpointError`` otherwise); the
    directory is written atomically. An existing ``out`` is replaced only when it
    is an sdm checkpoint (or empty) unless ``overwrite``, never when it holds
    ``checkpoint`` (``sdm.output_folders``). Returns ``out``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    # A refused --out fails before the (large) weights are read; atomic_dir checks again before the swap.
    check_output_dir(out, CHECKPOINT, overwrite=overwrite, sources=[checkpoint])
    model = load_official_checkpoint(checkpoint, config.model,
                                     "the resolved model section (params.yaml / --preset / --official-flag / --set)")
    meta = {"source": "official SDM release (github.com/WeilunWang/semantic-diffusion-model)",
            "official_checkpoint": checkpoint.name, "official_sha256": _sha256(checkpoint)}
    # save_checkpoint writes the checkpoint files; the outer folder adds the marker and the guarded swap.
    with atomic_dir(out, kind=CHECKPOINT, overwrite=overwrite, sources=[checkpoint],
                    source=checkpoint.resolve()) as tmp:
        save_checkpoint(tmp, model.state_dict(), config, meta=meta)
    return out
