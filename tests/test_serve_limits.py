"""The served model's request limits (issue 14 item 8): rows, steps, guidance range, samplers.

Limits come from ``register.serving`` at registration and live in the version's MLflow ``model_config``;
the real registered pyfunc (loaded through ``mlflow.pyfunc.load_model``) refuses a request over any of
them with an INVALID_PARAMETER_VALUE MlflowException (HTTP 400 when served; tests/test_registry_serve.py
sends one through a real ``mlflow models serve``) naming the limit, before sampling anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _registry_helpers import make_checkpoint, tiny_config, write_metrics

from sdm.config.load import ConfigError
from sdm.registry.pyfunc_io import LIMITS_KEY, ModelInputError, RequestLimits, sampling_options, serving_model_config
from sdm.registry.register import register_checkpoint

NAME = "sdm-limits-test"
LIMITS = ("register.serving.max_rows=3", "register.serving.max_steps=4", "register.serving.min_guidance_scale=1.0",
          "register.serving.max_guidance_scale=3.0", "register.serving.samplers=[ddim,dpmpp]")


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"labels": [np.zeros((8, 8), np.int64)] * n})


@pytest.mark.slow
def test_the_registered_model_refuses_requests_over_each_limit(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

    checkpoint = make_checkpoint(tmp_path / "final")
    metrics = write_metrics(tmp_path / "metrics.json", {"fsd@1.5": 0.4})
    register_checkpoint(checkpoint, metrics, tiny_config("sample.guidance_scale=1.5", *LIMITS), name=NAME)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert model.model_config[LIMITS_KEY] == {"max_rows": 3, "max_steps": 4, "min_guidance_scale": 1.0,
                                              "max_guidance_scale": 3.0, "samplers": ["ddim", "dpmpp"]}

    # At every limit: answered.
    images = model.predict(_rows(3), params={"steps": 4, "guidance_scale": 3.0, "sampler": "dpmpp", "seed": 1})
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8

    over = [
        (_rows(4), {}, r"4 rows \(label maps\) in one request; this model takes at most 3 per request "
                       r"\(register.serving.max_rows\)"),
        (_rows(1), {"steps": 5}, r"param steps=5 is above this model's limit of 4 \(register.serving.max_steps\)"),
        (_rows(1), {"guidance_scale": 3.5}, r"param guidance_scale=3.5 is outside this model's range \[1.0, 3.0\]"),
        (_rows(1), {"guidance_scale": 0.5}, r"param guidance_scale=0.5 is outside this model's range \[1.0, 3.0\]"),
        (_rows(1), {"guidance_scale": float("nan")}, r"param guidance_scale=nan is outside"),
        (_rows(1), {"sampler": "ddpm"}, r"param sampler='ddpm' is not allowed by this model; it serves ddim, dpmpp "
                                        r"\(register.serving.samplers\)"),
        (_rows(1), {"seed": -1}, r"param seed=-1 must be in \[0, 2\*\*63 - 1\]"),
    ]
    for frame, params, message in over:
        with pytest.raises(MlflowException, match=message) as err:
            model.predict(frame, params=params)
        assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
        assert err.value.get_http_status_code() == 400

    # mlflow/README.md: limits can be changed when loading, without registering again.
    looser = mlflow.pyfunc.load_model(f"models:/{NAME}/1", model_config={LIMITS_KEY: {"max_rows": 5}})
    assert looser.predict(_rows(4), params={"steps": 1}).shape == (4, 8, 8, 3)


def test_limits_default_for_versions_registered_before_them_and_are_checked_when_stored() -> None:
    limits = RequestLimits.from_model_config(None)
    assert (limits.max_rows, limits.max_steps, limits.max_guidance_scale) == (16, 1000, 10.0)
    assert limits.samplers == ("ddpm", "ddim", "dpmpp", "dpmpp-sde", "renoise")
    # A hand-edited model_config goes through the same checks as params.yaml.
    with pytest.raises(ConfigError, match=r"register.serving.max_rows: 0 is below the minimum 1"):
        RequestLimits.from_model_config({LIMITS_KEY: {"max_rows": 0}})
    with pytest.raises(ConfigError, match=r"register.serving.max_guidance_scale: expected a finite number"):
        RequestLimits.from_model_config({LIMITS_KEY: {"max_guidance_scale": float("inf")}})


@pytest.mark.parametrize("extra, message", [
    (("register.serving.samplers=[ddpm]",), r"outside register.serving: param sampler='ddim' is not allowed"),
    (("register.serving.max_steps=1", "sample.steps=2"), r"param steps=2 is above this model's limit of 1"),
    (("register.serving.max_guidance_scale=1.0",), r"param guidance_scale=1.5 is outside this model's range"),
    (("register.serving.min_guidance_scale=4", "register.serving.max_guidance_scale=3"),
     r"min_guidance_scale=4.0 is above register.serving.max_guidance_scale=3.0"),
    (("register.serving.samplers=",), r"register.serving.samplers: empty"),
])
def test_limits_that_refuse_the_models_own_defaults_are_refused(extra: tuple[str, ...], message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        serving_model_config(tiny_config("sample.guidance_scale=1.5", *extra))


def test_register_refuses_bad_limits_before_anything_is_written(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    checkpoint = make_checkpoint(tmp_path / "final")
    metrics = write_metrics(tmp_path / "metrics.json", {"fsd@1.5": 0.4})
    with pytest.raises(ModelInputError, match="register.serving"):
        register_checkpoint(checkpoint, metrics, tiny_config("register.serving.samplers=[ddpm]"), name=NAME)
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.search_registered_models() == []
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_steps_above_the_trained_schedule_are_refused() -> None:
    sample = tiny_config().sample
    with pytest.raises(ModelInputError, match=r"param steps=60 is above the model's 50 diffusion steps"):
        sampling_options({"steps": 60}, sample, RequestLimits.from_model_config(None), diffusion_steps=50)
    with pytest.raises(ModelInputError, match=r"param steps='many' is not an integer"):
        sampling_options({"steps": "many"}, sample)
