"""Run configuration: typed sections, presets, params.yaml and ``--set`` overrides."""

from sdm.config.load import (
    ConfigError,
    available_presets,
    dump_yaml,
    from_dict,
    parse_override,
    read_yaml,
    resolve,
    to_dict,
    write_resolved,
)
from sdm.config.schema import (
    Config,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    ModelConfig,
    PhaseConfig,
    PromotionConfig,
    RegisterConfig,
    RetrainConfig,
    SampleConfig,
    SegmenterConfig,
    SynthConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "DataConfig", "DiffusionConfig", "EvaluateConfig", "ModelConfig",
    "PhaseConfig", "PromotionConfig", "RegisterConfig", "RetrainConfig", "SampleConfig", "SegmenterConfig",
    "SynthConfig", "TrainConfig",
    "available_presets", "dump_yaml", "from_dict", "parse_override", "read_yaml", "resolve",
    "to_dict", "write_resolved",
]
