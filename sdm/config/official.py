"""The official SDM scripts' flags -> our ``ModelConfig``.

The official ``image_train.py`` / ``image_sample.py`` take guided-diffusion
style flags; a flag not given takes the official default. Values may be
strings as on the command line ("True", "32,16,8").
"""

from __future__ import annotations

from typing import Any

from sdm.config.load import ConfigError, from_dict
from sdm.config.schema import ModelConfig
from sdm.suggest import did_you_mean

# Defaults of the official model_and_diffusion_defaults().
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_classes": 151,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "no_instance": False,
    "learn_sigma": False,
    "dataset_mode": "",
}

# The official channel_mult for each image_size when the flag is empty.
OFFICIAL_CHANNEL_MULT: dict[int, list[float]] = {
    512: [0.5, 1, 1, 2, 2, 4, 4],
    256: [1, 1, 2, 2, 4, 4],
    128: [1, 1, 2, 3, 4],
    64: [1, 2, 3, 4],
}

OFFICIAL_SPADE_HIDDEN = 128

# Datasets the official code trains at a non-square size: height = size * ratio.
OFFICIAL_HEIGHT_RATIO: dict[str, float] = {"cityscapes": 0.5}

_IGNORED = {"class_cond", "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl",
            "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "use_new_attention_order",
            "data_dir", "lr", "batch_size", "drop_rate", "s", "model_path", "results_path",
            "num_samples", "resume_checkpoint", "use_ddim", "clip_denoised", "is_train"}


def _flag_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1", "yes")


def model_config_from_official_args(mapping: dict[str, Any]) -> ModelConfig:
    """Build a ``ModelConfig`` from official flags (unknown flags are an error)."""
    unknown = set(mapping) - set(OFFICIAL_DEFAULTS) - _IGNORED
    if unknown:
        known = sorted(set(OFFICIAL_DEFAULTS) | _IGNORED)
        raise ConfigError("unknown official flag(s): "
                          + ", ".join(f"{flag}{did_you_mean(flag, known)}" for flag in sorted(unknown)))
    a = {**OFFICIAL_DEFAULTS, **mapping}
    size = int(a["image_size"])
    mult = a["channel_mult"]
    if mult in ("", None):
        if size not in OFFICIAL_CHANNEL_MULT:
            raise ConfigError(f"image_size {size}: the official code has no default channel_mult for it; "
                              f"pass channel_mult")
        mult = OFFICIAL_CHANNEL_MULT[size]
    height = int(size * OFFICIAL_HEIGHT_RATIO.get(str(a["dataset_mode"]), 1.0))
    return from_dict(
        {
            "image_size": [height, size],
            "num_classes": int(a["num_classes"]),
            "use_instance": not _flag_bool(a["no_instance"]),
            "model_channels": int(a["num_channels"]),
            "num_res_blocks": int(a["num_res_blocks"]),
            "channel_mult": mult,
            "attention_resolutions": a["attention_resolutions"],
            "num_heads": int(a["num_heads"]),
            "num_head_channels": int(a["num_head_channels"]),
            "num_heads_upsample": int(a["num_heads_upsample"]),
            "dropout": float(a["dropout"]),
            "use_scale_shift_norm": _flag_bool(a["use_scale_shift_norm"]),
            "resblock_updown": _flag_bool(a["resblock_updown"]),
            "learn_sigma": _flag_bool(a["learn_sigma"]),
            "use_checkpoint": _flag_bool(a["use_checkpoint"]),
            "use_fp16": _flag_bool(a["use_fp16"]),
            # The official SPADE always has 128 hidden channels (no flag for it).
            "spade_hidden": OFFICIAL_SPADE_HIDDEN,
        },
        ModelConfig,
        "model",
    )
