"""`sdm reproduce models:/NAME/V`: a registered version trained again, bit for bit, from its lineage alone.

A scratch git + DVC project (tests/test_data_checkout.py's ``pushed``: data prepared from an uncommitted
params.yaml change and pushed to a local directory remote), a tiny model trained in this process
(``sdm.train.train(local=True)``, which writes the ``reproduce/`` record into the run folder and the
MLflow run) and registered. Then the prepared data, the DVC cache and the run folder are deleted, and
`sdm reproduce` restores the data from the remote and ends on the same EMA weights.
Then the errors: an unknown version, a remote without the data, other code; each exit 2, named, no --out.
The pipeline's own run (Ray, uncommitted params) is reproduced in tests/test_pipeline_flow.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from _registry_helpers import write_metrics
from test_data_checkout import digests, pushed  # noqa: F401  (pushed: the fixture)
from typer.testing import CliRunner

from sdm.cli import app
from sdm.config import resolve
from sdm.registry.fingerprint import code_hash
from sdm.registry.lineage import CHECKPOINT_SHA256_TAG
from sdm.reproduce.record import read_record

NAME = "sdm-reproduce-test"
TINY = [
    "model.image_size=[32,32]", "model.model_channels=32", "model.channel_mult=[1,1]",
    "model.attention_resolutions=[16]", "model.num_heads=1", "model.spade_hidden=8", "diffusion.steps=50",
    "train.batch_size=4", "train.workers=1", "train.log_every=1", "train.checkpoint_every=2",
    "train.sample_every=1000", "train.pretrain.steps=3", "train.finetune.steps=2",
    f"register.model_name={NAME}",
    # Only for the other-machine verdict (evaluated there): small and quick.
    "evaluate.guidance_scales=[1.5]", "evaluate.steps=2", "evaluate.num_samples=4", "evaluate.repeats=2",
    "evaluate.segmenter.steps=5", "evaluate.segmenter.batch_size=4", "evaluate.segmenter.width=8",
    "evaluate.min_fid_samples=10",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def registered(pushed: tuple[Path, str, str], mlflow_uri: str, tmp_path: Path,  # noqa: F811
               monkeypatch: pytest.MonkeyPatch) -> dict:
    """Version 1 of NAME: trained locally on the pushed data (its record in MLflow), registered."""
    import torch

    from sdm.registry.register import register_checkpoint
    from sdm.train import train

    repo, version, md5 = pushed
    monkeypatch.chdir(repo)
    cfg = resolve(params=repo / "params.yaml", overrides=[*TINY, f"train.storage_path={tmp_path / 'runs'}"])
    result = train(cfg, run_name="r1", local=True, echo=lambda s: None)
    record = read_record(result.run_dir / "reproduce")
    assert record["data"]["dvc_tracked"] and record["data"]["md5"] == md5
    assert record["data"]["data_version"] == version and record["data"]["stage"] == "prepare"
    assert record["code"]["code_hash"] == code_hash() and record["run"]["mode"] == "local"
    assert record["run"]["machine"]["device"] == "cpu" and record["run"]["machine"]["torch"] == torch.__version__
    # The same record went to the training run's MLflow artifacts.
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    listed = {a.path for a in client.list_artifacts(result.mlflow_run_id, "reproduce")}
    assert {"reproduce/config.yaml", "reproduce/data.json", "reproduce/code.json", "reproduce/run.json"} <= listed
    metrics = write_metrics(tmp_path / "metrics.json", {"fsd@1.5": 3.0, "miou@1.5": 0.25})
    reg = register_checkpoint(result.final_dir, metrics, cfg, name=NAME)
    return {"repo": repo, "run_dir": result.run_dir, "sha256": reg.tags[CHECKPOINT_SHA256_TAG],
            "run_id": result.mlflow_run_id, "md5": md5, "uri": f"models:/{NAME}/{reg.version}"}


@pytest.mark.slow
def test_reproduce_restores_the_data_and_ends_on_identical_weights(registered: dict, tmp_path: Path) -> None:
    repo = registered["repo"]
    shutil.rmtree(repo / "data" / "prepared" / "synthetic")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(registered["run_dir"])
    out = tmp_path / "again"
    # A relative --out, as the README gives it (the cwd is the repo).
    got = CliRunner().invoke(app, ["reproduce", registered["uri"], "--out", os.path.relpath(out, repo)])
    assert got.exit_code == 0, got.output
    assert "identical: the same weights, bit for bit" in got.output and registered["sha256"] in got.output
    report = json.loads((out / "report.json").read_text())
    assert report["identical"] and report["same_machine_kind"] and report["data_md5"] == registered["md5"]
    assert sha256(out / "runs" / "r1" / "final" / "ema.safetensors") == registered["sha256"]
    assert (out / "data" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "again" in p.name) == ["again"]

    # `sdm data checkout` of the version: the data it trained on, by its recorded dvc.lock entry.
    data = tmp_path / "data-of-v1"
    got = CliRunner().invoke(app, ["data", "checkout", registered["uri"], "--out", str(data)])
    assert got.exit_code == 0 and "found by recorded" in got.output, got.output
    assert digests(data) == digests(out / "data")

    # Again into the same folder: its own output is replaced, same answer.
    got = CliRunner().invoke(app, ["reproduce", registered["uri"], "--out", str(out)])
    assert got.exit_code == 0 and "identical" in got.output, got.output


@pytest.mark.slow
def test_reproduce_errors_are_named_and_leave_no_out(registered: dict, tmp_path: Path, mlflow_uri: str) -> None:
    out = tmp_path / "never"

    def run(uri: str) -> str:
        got = CliRunner().invoke(app, ["reproduce", uri, "--out", str(out)])
        assert got.exit_code == 2, got.output
        assert not out.exists() and not [p for p in tmp_path.iterdir() if "never" in p.name]
        return got.output

    # An unknown version.
    assert f"model {NAME!r} has no version 9" in run(f"models:/{NAME}/9")
    assert "no alias 'gone'" in run(f"models:/{NAME}@gone")

    # Other code: the record says another code hash, a commit and a dirty tree with its diff.
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    rec = tmp_path / "rec" / "reproduce"
    shutil.copytree(registered["run_dir"] / "reproduce", rec)
    code = json.loads((rec / "code.json").read_text())
    code.update(code_hash="0" * 64, git_commit="1234567890abcdef", git_dirty="true", diff="code.diff")
    (rec / "code.json").write_text(json.dumps(code))
    (rec / "code.diff").write_text("diff --git a/x b/x\n")
    client.log_artifacts(registered["run_id"], str(rec), "reproduce")
    text = run(registered["uri"])
    assert "not the code that trained it" in text and "git checkout 1234567890abcdef" in text
    diff = Path(text.split("git apply ", 1)[1].split()[0])
    assert diff.read_text() == "diff --git a/x b/x\n" and out not in diff.parents
    shutil.rmtree(diff.parent)  # kept by sdm for the user's `git apply`; the test's own to clean
    # Put the true record back for the next check.
    client.log_artifacts(registered["run_id"], str(registered["run_dir"] / "reproduce"), "reproduce")

    # The remote lost the data.
    remote = tmp_path / "remote"
    shutil.rmtree(remote)
    remote.mkdir()
    shutil.rmtree(registered["repo"] / ".dvc" / "cache")
    text = run(registered["uri"])
    assert f"does not hold md5 {registered['md5']}" in text and str(remote) in text
    assert yaml.safe_load((registered["repo"] / "dvc.lock").read_text())  # the project is untouched


@pytest.mark.slow
def test_different_weights_fail_on_the_same_machine_kind_and_are_evaluated_on_another(
        registered: dict, tmp_path: Path, mlflow_uri: str) -> None:
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    # The version says other weights (as if training had changed underneath).
    client.set_model_version_tag(NAME, "1", CHECKPOINT_SHA256_TAG, "0" * 64)
    got = CliRunner().invoke(app, ["reproduce", registered["uri"], "--out", str(tmp_path / "same")])
    assert got.exit_code == 1, got.output
    assert "DIFFERENT weights on the same kind of machine" in got.output
    assert not json.loads((tmp_path / "same" / "report.json").read_text())["identical"]

    # ... and were trained on another kind of machine: no verdict on bits, the figures side by side.
    rec = tmp_path / "rec" / "reproduce"
    shutil.copytree(registered["run_dir"] / "reproduce", rec)
    run = json.loads((rec / "run.json").read_text())
    run["machine"]["device_name"] = "another CPU"
    (rec / "run.json").write_text(json.dumps(run))
    # ... and was resumed once on other code: said, and counted in the report.
    (rec / "resumes.json").write_text(json.dumps([{"from_checkpoint": "checkpoint-pretrain-0000002",
                                                   "code_hash": "b" * 64, "mode": "local", "workers": 1}]))
    client.log_artifacts(registered["run_id"], str(rec), "reproduce")
    got = CliRunner().invoke(app, ["reproduce", registered["uri"], "--out", str(tmp_path / "other")])
    assert got.exit_code == 0, got.output
    assert "resumed on other code or settings than it started with (from checkpoint-pretrain-0000002: code " \
           "bbbbbbbbbbbb, local with 1 worker(s)" in got.output, got.output
    assert json.loads((tmp_path / "other" / "report.json").read_text())["resumed_differently"] == 1
    assert "another kind of machine (recorded: device_name another CPU)" in got.output
    # Every figure of either: the version's (its metrics.* tags) beside the new evaluation's.
    assert re.search(r"\| miou@1\.5 \| 0\.25 \| 0\.\d+ \|", got.output), got.output
    assert "| fsd@1.5 | 3.0 | " in got.output
    assert (tmp_path / "other" / "evaluation" / "metrics.json").is_file()


@pytest.mark.slow
def test_the_record_by_alias_from_mlflow_else_from_the_run_folder(registered: dict, tmp_path: Path,
                                                                    mlflow_uri: str) -> None:
    from urllib.parse import unquote, urlparse

    from sdm.reproduce.version import NoRecordError, version_record

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    alias = f"models:/{NAME}@champion"
    def same(record: dict) -> bool:
        """The recorded content (code.diff's path is where it was downloaded to: its bytes must match)."""
        diff, want = record.get("diff_path"), expected.get("diff_path")
        rest = [{k: v for k, v in r.items() if k != "diff_path"} for r in (record, expected)]
        return rest[0] == rest[1] and (diff is None) == (want is None) and (
            diff is None or diff.read_bytes() == want.read_bytes())

    expected = read_record(registered["run_dir"] / "reproduce")
    found = version_record(alias, tmp_path / "a")
    assert (found.source, found.version) == ("mlflow", "1") and same(found.record)

    # `sdm data checkout` by alias: the data that version trained on.
    got = CliRunner().invoke(app, ["data", "checkout", alias, "--out", str(tmp_path / "data")])
    assert got.exit_code == 0, got.output
    assert digests(tmp_path / "data") == digests(registered["repo"] / "data" / "prepared" / "synthetic")

    # The MLflow run lost its reproduce/ artifacts (tracking was down when it trained): the run folder's copy.
    artifact_uri = client.get_run(registered["run_id"]).info.artifact_uri
    artifacts = Path(unquote(urlparse(artifact_uri).path)) if artifact_uri.startswith("file:") else Path(artifact_uri)
    assert (artifacts / "reproduce" / "code.json").is_file(), artifact_uri
    shutil.rmtree(artifacts / "reproduce")
    found = version_record(alias, tmp_path / "b")
    assert found.source == "run folder" and same(found.record)
    assert found.folder.is_relative_to(tmp_path / "b")

    # Neither: a named error that says what was tried.
    shutil.rmtree(registered["run_dir"] / "reproduce")
    with pytest.raises(NoRecordError, match=r"has no readable reproduce/ artifacts.*run folder .* has no reproduce/"):
        version_record(alias, tmp_path / "c")


def test_data_version_strings_and_the_verdict(tmp_path: Path) -> None:
    """Fast: which version strings name DVC data, and what each comparison of weights means."""
    from sdm.reproduce.checkout import DataCheckoutError, parse_data_version
    from sdm.reproduce.record import data_record, machine_record
    from sdm.reproduce.rerun import ReproduceResult

    assert parse_data_version("dvc:0123456789AB@deadbeefdead") == "0123456789ab"
    assert parse_data_version("0123456789abcdef0123456789abcdef.dir") == "0123456789abcdef0123456789abcdef"
    for bad, why in (("manifest:0123456789ab@x", "not DVC data"), ("v1", "expected dvc:<md5>@<commit>"),
                     ("dvc:xyz@1", "expected dvc:<md5>@<commit>")):
        with pytest.raises(DataCheckoutError, match=why):
            parse_data_version(bad)
    # A folder that is not dvc.lock's output: recorded as such, with the reason.
    rec = data_record(tmp_path, "manifest:0123456789ab@nogit")
    assert rec["dvc_tracked"] is False and "no DVC remote holds it" in rec["reason"]

    here = machine_record(False, "fp32")
    assert here["device"] == "cpu" and here["precision"] == "fp32"
    other = {**here, "device_name": "another CPU"}

    def result(sha: str, machine: dict) -> ReproduceResult:
        return ReproduceResult(uri="models:/m/1", out=tmp_path, checkpoint=tmp_path, expected_sha256="a" * 64,
                               sha256=sha, recorded_machine=machine, machine=here,
                               figures={"fsd@1.5": ("3.0", 3.25)})

    same = result("a" * 64, here)
    assert same.exit_code == 0 and "identical" in same.summary()
    drift = result("b" * 64, here)
    assert drift.exit_code == 1 and "DIFFERENT weights on the same kind of machine" in drift.summary()
    moved = result("b" * 64, other)
    assert moved.exit_code == 0 and "another kind of machine" in moved.summary()
    assert "| fsd@1.5 | 3.0 | 3.25 |" in moved.summary() and "device_name another CPU" in moved.summary()


def test_a_resume_keeps_the_start_record_and_notes_other_code_or_settings(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast: the record describes how the run started; resumes on other code or settings go to resumes.json."""
    from sdm.reproduce import record as rec_mod

    code = {"doc": {"git_commit": "c1", "git_dirty": "false", "code_hash": "a" * 64, "diff": None}, "diff": None}
    monkeypatch.setattr(rec_mod, "code_record", lambda: (dict(code["doc"]), code["diff"]))
    run = rec_mod.run_record(local=True, workers=1, use_gpu=False, phases=["pretrain"], run_name="r",
                             precision="fp32", init_from=None)
    folder = rec_mod.write_record(tmp_path, "train: {}\n", {"dvc_tracked": False, "reason": "test"}, run)
    start = {p.name: p.read_bytes() for p in folder.iterdir()}

    def resume(checkpoint: str, **changes: Any) -> list[dict]:
        rec_mod.record_resume(tmp_path, checkpoint, {**run, **changes})
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in start} == start  # start untouched
        return rec_mod.read_record(folder)["resumes"]

    assert resume("checkpoint-1") == [] and not (folder / rec_mod.RESUMES_FILE).exists()  # same code: nothing
    code["doc"] = {**code["doc"], "git_dirty": "true", "code_hash": "b" * 64, "diff": "code.diff"}
    code["diff"] = "diff --git a/sdm/x.py b/sdm/x.py\n"
    got = resume("checkpoint-2")
    assert [(r["from_checkpoint"], r["code_hash"], r["diff"]) for r in got] == [("checkpoint-2", "b" * 64,
                                                                                 "resume-1.diff")]
    assert (folder / "resume-1.diff").read_text() == code["diff"]
    assert len(resume("checkpoint-3")) == 1  # the same other code again: nothing new
    assert [r["workers"] for r in resume("checkpoint-4", workers=2)] == [1, 2]  # other settings
    code["doc"], code["diff"] = {**code["doc"], "git_dirty": "false", "code_hash": "a" * 64, "diff": None}, None
    got = resume("checkpoint-5", workers=2)  # back to the start's code: a change from the part before
    assert [r["code_hash"][0] for r in got] == ["b", "b", "a"] and got[-1]["diff"] is None
