"""The registered model's interface: its MLflow signature and input example.

Input: one row per image. Column ``labels`` (required) holds an integer label
map [H, W] with values in 0..num_classes-1; column ``instances`` (optional)
holds an integer instance-id map [H, W] (instance edges; without it the edges
come from the label map). Columns of nested arrays let ``instances`` be
optional, which a tensor signature cannot express, and work with every JSON
form ``mlflow models serve`` takes (``dataframe_records``, ``dataframe_split``,
``inputs`` as a list of records).

Params: ``guidance_scale``, ``sampler``, ``steps``, ``seed`` (defaults from the
``sample`` config), within the version's request limits (``register.serving``,
``sdm.registry.pyfunc_io.RequestLimits``). Output: uint8 images [N, H, W, 3].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from sdm.config.schema import Config, SampleConfig

LABELS = "labels"
INSTANCES = "instances"
PARAM_NAMES = ("guidance_scale", "sampler", "steps", "seed", "eta")


def model_signature(config: Config, sample: SampleConfig | None = None) -> ModelSignature:
    """The signature of a model trained with ``config``; param defaults from ``sample`` (else config.sample)."""
    sample = sample or config.sample
    h, w = config.model.image_size
    map_type = Array(Array(DataType.long))
    inputs = Schema([ColSpec(map_type, LABELS), ColSpec(map_type, INSTANCES, required=False)])
    outputs = Schema([TensorSpec(np.dtype("uint8"), (-1, h, w, 3))])
    params = ParamSchema([
        ParamSpec("guidance_scale", DataType.double, float(sample.guidance_scale)),
        ParamSpec("sampler", DataType.string, sample.sampler),
        ParamSpec("steps", DataType.long, int(sample.steps)),
        ParamSpec("seed", DataType.long, int(sample.seed)),
        ParamSpec("eta", DataType.double, float(sample.eta)),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_label_map(config: Config) -> np.ndarray:
    """A small valid label map [H, W] int64: vertical bands over the first classes."""
    h, w = config.model.image_size
    bands = min(config.model.num_classes, 4)
    return np.repeat((np.arange(w) * bands // w)[None, :], h, axis=0).astype(np.int64)


def input_example(config: Config) -> pd.DataFrame:
    """One row: a label map (and, for models that use instance edges, its instance map)."""
    label = example_label_map(config)
    row: dict[str, list] = {LABELS: [label.tolist()]}
    if config.model.use_instance:
        row[INSTANCES] = [label.tolist()]  # one instance per band
    return pd.DataFrame(row)
