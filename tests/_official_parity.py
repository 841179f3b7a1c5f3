"""The official SDM model's facts that the tests compare against, and how to re-create its weights.

Two fixtures in tests/data, both written by ``benchmarks/parity_official.py --official PATH`` from an
outside checkout of github.com/WeilunWang/semantic-diffusion-model (no official code is in this repo):

- ``official_keys_small.json``: the official ``UNetModel``'s key names and shapes for a few small configs;
- ``official_outputs_small.safetensors``: for the same configs, fixed inputs and the official model's
  output on them, with its weights made by ``official_state`` (below), so no weights need storing:
  ``<config>/x_t`` float32 [N,3,H,W], ``<config>/t`` int64 [N], ``<config>/label`` int32 [N,H,W],
  ``<config>/instance`` int32 [N,H,W] (configs with instances), ``<config>/output`` float32 [N,C,H,W]
  (the official forward on the official one-hot + instance-edge label map), and ``<config>/probe``
  float32 [K]: the first value of every parameter in sorted key order, to tell "the random generator
  changed" apart from "the model changed".
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from sdm.config.schema import ModelConfig

DATA = Path(__file__).parent / "data"
KEYS_FIXTURE = DATA / "official_keys_small.json"
OUTPUTS_FIXTURE = DATA / "official_outputs_small.safetensors"


def official_keys() -> dict[str, dict]:
    """Config name -> {"official_args": ..., "keys": {official key: shape}} (the small configs)."""
    return {k: v for k, v in json.loads(KEYS_FIXTURE.read_text()).items() if not k.startswith("_")}


def config_of(args: dict) -> ModelConfig:
    """Our ``ModelConfig`` for a fixture's ``official_args`` (SPADE hidden 128, as the official model)."""
    return ModelConfig(image_size=args["size"], num_classes=args["num_classes"], use_instance=args["use_instance"],
                       model_channels=args["mc"], num_res_blocks=args["nrb"],
                       channel_mult=[float(m) for m in args["mult"]], attention_resolutions=args["attn"],
                       num_heads=args["heads"], num_head_channels=args["head_ch"], num_heads_upsample=args["heads_up"],
                       use_scale_shift_norm=args["ss"], resblock_updown=args["updown"], learn_sigma=args["sigma"],
                       spade_hidden=128)


def key_seed(config_name: str, key: str) -> int:
    """The seed of one parameter: from its config and key name, so two parameters never share values."""
    return int.from_bytes(hashlib.sha256(f"{config_name}/{key}".encode()).digest()[:8], "little") >> 1


def official_parameter(config_name: str, key: str, shape: list[int]) -> torch.Tensor:
    """float32 ``shape``: N(0, 1 / fan_in) from the key's own generator (every parameter, zero-init convs too)."""
    g = torch.Generator().manual_seed(key_seed(config_name, key))
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(shape, generator=g) / fan_in**0.5


def official_state(config_name: str, keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """An official-keyed state dict for ``keys`` (official key -> shape), re-creatable from names alone."""
    return {k: official_parameter(config_name, k, shape) for k, shape in keys.items()}


def probe(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 [K]: the first value of each parameter, keys sorted."""
    return torch.stack([state[k].reshape(-1)[0] for k in sorted(state)])
