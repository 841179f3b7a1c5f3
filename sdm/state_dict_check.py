"""Check a state dict against a model before loading it, with errors that say what differs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sdm.errors import InputError


class CheckpointError(InputError):
    """Weights that do not fit the configured model, or a checkpoint file that cannot be read."""


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _hint(key: str, found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """A likely cause for the most telling shape mismatches."""
    if key.endswith("mlp_shared.0.weight") and found[1] != expected[1]:
        return (f"; the weights take {found[1]} label-map channels but the config gives {expected[1]} "
                f"(model.num_classes + 1 if model.use_instance)")
    if key == "input_blocks.0.0.weight" and found[0] != expected[0]:
        return f"; model.model_channels * channel_mult[0] is {found[0]} in the weights, {expected[0]} in the config"
    if key.startswith("out.2.") and found[0] != expected[0]:
        return f"; the weights output {found[0]} channels (model.learn_sigma gives 6, else 3), config {expected[0]}"
    return ""


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, config_source: str) -> None:
    """Raise ``CheckpointError`` naming ``source``, the key, the shape found and expected on any mismatch.

    ``config_source`` names where the model's configuration came from (for the message).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad_types = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad_types:
        raise CheckpointError(f"{source}: entries that are not tensors: {_listing(sorted(bad_types))}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} key(s) that the model configured by {config_source} "
                              f"needs: {_listing(missing)} (a different channel_mult, num_res_blocks, "
                              f"attention_resolutions or resblock_updown?)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} key(s) that the model configured by {config_source} "
                              f"does not have: {_listing(unexpected)}")
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            found = tuple(state[key].shape)
            raise CheckpointError(f"{source}: key '{key}' has shape {list(found)} but the model configured by "
                                  f"{config_source} expects {list(shape)}{_hint(key, found, shape)}")
