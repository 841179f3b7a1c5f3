"""Load the official SDM release's weights (github.com/WeilunWang/semantic-diffusion-model).

The official checkpoints are plain state dicts whose keys are ``time_embed.*``,
``input_blocks.*``, ``middle_block.*``, ``output_blocks.*`` and ``out.*``.
``SDMUNet`` names its modules after the official ones, so the keys map one to
one; ``OFFICIAL_RENAMES`` is where a key that differs would be translated.
The attention qkv layout is the official default ("legacy" order: per head
q, k, v), which ``sdm.nn.attention`` reproduces.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from sdm.config.schema import ModelConfig
from sdm.nn.unet import SDMUNet
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
                             config: ModelConfig) -> SDMUNet:
    """An ``SDMUNet(config)`` in eval mode holding the official weights (a .pt path or its state dict).

    Keys or shapes that do not fit ``config`` raise ``CheckpointError`` naming
    the file, the key, the shape found and expected.
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
    check_state_dict(model, state, source, "the model config")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
    return model.eval()
