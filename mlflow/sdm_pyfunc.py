"""The sdm model as an MLflow pyfunc, logged as model-from-code by ``sdm register``.

MLflow copies this file into the model and runs it on load; nothing is
pickled. The checkpoint (safetensors + config.json) travels as the artifact
``checkpoint`` and the ``sdm`` package as the model's code path, so a model
loads and serves without sdm installed (only torch, safetensors, numpy, pyyaml).

Input rows, params and output: see ``sdm/registry/signature.py`` and
mlflow/README.md. Request limits (rows, steps, guidance range, samplers) come
from the version's ``model_config`` (``register.serving`` at registration); a
request over one is refused before any sampling. This folder must never get an ``__init__.py``: it would
shadow the ``mlflow`` package.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel


class SDMPyfunc(PythonModel):
    """Label maps in, uint8 images [N, H, W, 3] out, by classifier-free guided sampling."""

    def load_context(self, context: Any) -> None:
        import torch

        from sdm.model import load_checkpoint
        from sdm.registry.pyfunc_io import RequestLimits

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.config = load_checkpoint(context.artifacts["checkpoint"], use_ema=True, device=device)
        self.limits = RequestLimits.from_model_config(getattr(context, "model_config", None))

    # pd.DataFrame is a hint MLflow infers no signature from: the explicit signature (signature.py) stands.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from sdm.registry.pyfunc_io import parse_model_input, sampling_options, speed_options
        from sdm.sampling import generate

        try:
            # Params first: a request over a limit is refused before its rows are parsed.
            opts = sampling_options(params, self.config.sample, self.limits, self.config.diffusion.steps)
            labels, instances = parse_model_input(model_input, self.config, self.limits)
            return generate(self.model, self.config, labels, instances, batch_size=self.config.sample.batch_size,
                            **opts, **speed_options(self.config.sample))
        except ValueError as e:
            # A request this model cannot take: MLflow answers it with HTTP 400 and this message.
            raise MlflowException.invalid_parameter_value(str(e)) from e


mlflow.models.set_model(SDMPyfunc())
