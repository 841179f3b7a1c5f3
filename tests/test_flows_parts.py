"""The flows' pure parts: retry condition, override guard, stage choice, summary markdown, schedule spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from flows.retrain import deployment_spec, image_markdown, metrics_table, retrain_summary
from flows.tasks import check_overrides, stage_for, transient_only
from sdm.config import ConfigError, resolve
from sdm.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_retry_only_transient_failures() -> None:
    assert transient_only(None, None, Failed(data=ConnectionError("server down")))
    assert not transient_only(None, None, Failed(data=ValueError("no metrics in metrics.json")))
    assert not transient_only(None, None, Failed(data=ConfigError("bad key")))


def test_data_overrides_refused_but_training_ones_pass() -> None:
    with pytest.raises(ConfigError, match="data.image_size"):
        check_overrides(["data.image_size=[64,64]"])
    with pytest.raises(ConfigError, match="data.synth.n"):
        check_overrides(["data.synth.n=10"])
    check_overrides(["train.pretrain.steps=10", "data.loader_workers=2", "data.random_flip=false"])


def test_stage_for_preset() -> None:
    assert stage_for(resolve(params=None)) == "prepare"
    assert stage_for(resolve(preset="toy", params=None)) == "prepare"
    assert stage_for(resolve(preset="ade20k", params=None)) == "prepare-ade20k"


def test_summary_markdown(tmp_path: Path) -> None:
    table = metrics_table({"miou@1.5": 0.5, "fsd@1.5": 12.25, "primary_metric": "fsd@1.5",
                           "skipped": {"fid": "no Inception weights"}})
    assert "| miou@1.5 | 0.5 |" in table and "fid**: no Inception weights" in table
    assert "primary_metric" not in table
    png = tmp_path / "g.png"
    png.write_bytes(b"\x89PNG fake")
    assert image_markdown(png).startswith("![sample grid](data:image/png;base64,")
    assert "no image" in image_markdown(tmp_path / "missing.png")
    doc = retrain_summary({"run_name": "r", "data_version": "dvc:abc@def", "data_cached": True,
                           "registration": {"name": "m", "version": "2", "aliases": ["candidate"],
                                            "decision": "kept"}, "metrics": {"miou@1.5": 0.5}})
    assert "dvc:abc@def" in doc and "preparation skipped" in doc and "models:/m/2" in doc and "kept" in doc


def test_prefect_yaml_has_the_nightly_deployment() -> None:
    spec = deployment_spec(REPO / "prefect.yaml")
    assert spec["entrypoint"] == "flows/retrain.py:retrain"
    assert spec["schedules"][0]["cron"] and spec["schedules"][0]["timezone"]
    with pytest.raises(ValueError, match="no deployment named 'nope'"):
        deployment_spec(REPO / "prefect.yaml", "nope")


def test_schedules_of_cron_and_interval() -> None:
    from flows.retrain import schedules_of

    spec = {"name": "d", "schedules": [{"cron": "0 2 * * *", "timezone": "UTC"}, {"interval": 30},
                                       {"cron": "0 3 * * *", "active": False}]}
    cron, every = schedules_of(spec)
    assert cron.cron == "0 2 * * *" and every.interval.total_seconds() == 30
    with pytest.raises(InputError, match="neither cron nor interval"):
        schedules_of({"name": "d", "schedules": [{"rrule": "FREQ=DAILY"}]})
