"""End to end: the Prefect `retrain` flow on tiny settings in a temp git + DVC project, scheduled on a real server.

One test (the whole pipeline is the expensive part, so it runs from scratch once here):

1. A real Prefect server (`prefect server start`, own PREFECT_HOME and sqlite database, free
   port) and `sdm pipeline serve` with a `retrain-nightly` deployment firing every few seconds
   (an interval instead of the nightly cron). The first scheduled run prepares the data (DVC
   repro), pushes it, trains, evaluates, registers and promotes version 1; the second finds
   nothing changed and ends "up to date" with no new version. The test reads both runs and
   their summaries from the server's REST API.
2. Then, in this process: a forced run (``retrain(force=True)``) with unchanged data skips
   preparation, trains anyway in a fresh run folder (continuing from champion v1), survives one
   transient registration failure (Prefect retries the task) and registers version 2.

3. Version 1 re-created from its lineage alone (issue 21): the runs above start from an uncommitted
   params.yaml change, so no commit's dvc.lock names v1's data; the prepared data, the DVC cache and
   v1's run folder are deleted, and `sdm reproduce models:/NAME/1` restores the data from the remote,
   trains again on Ray (as the original) and ends on identical EMA weights.

Unforced reruns after data / param changes (resume, continue): test_retrain_decide_flow.py.
Every process the test starts is stopped by its pid (its own process group).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from _pipeline_project import (  # noqa: F401  (the project and prefect_server fixtures)
    BIN,
    flow_runs,
    harness_summaries,
    prefect_server,
    project,
    server_summary,
    stop_group,
    tail,
)

pytestmark = pytest.mark.slow

INTERVAL_S = 10
MODEL = "sdm-pipeline-test"


def _summary_field(doc: str, name: str) -> str:
    m = re.search(rf"- \*\*{name}\*\*: `([^`]+)`", doc)
    assert m, f"no {name} in the summary:\n{doc}"
    return m.group(1)


def _scheduled_runs(proj: Path, url: str, env: dict[str, str], log: Path) -> tuple[dict, dict]:
    """Serve the deployment until the server holds two completed scheduled runs; the first two, oldest first."""
    spec = {"name": "sdm-test", "deployments": [{
        "name": "retrain-nightly", "entrypoint": "flows/retrain.py:retrain",
        "parameters": {"push": True}, "schedules": [{"interval": INTERVAL_S}]}]}
    (proj / "prefect.yaml").write_text(yaml.safe_dump(spec))
    with log.open("w") as out:
        serve = subprocess.Popen([str(BIN / "sdm"), "pipeline", "serve"], cwd=proj, env={**os.environ, **env},
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 540
        while True:
            assert serve.poll() is None, f"sdm pipeline serve exited ({serve.returncode}):\n{tail(log)}"
            runs = flow_runs(url)
            bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not bad, f"a scheduled run failed: {bad[0]['state_name']}\n{tail(log, 120)}"
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            if len(done) >= 2:
                break
            assert time.monotonic() < deadline, f"fewer than 2 completed runs after 540 s:\n{tail(log, 120)}"
            time.sleep(3)
    finally:
        stop_group(serve)
    first, second = sorted(done, key=lambda r: r["start_time"])[:2]
    return first, second


def test_retrain_scheduled_on_a_server_then_forced(project: Path, mlflow_uri: str,  # noqa: F811
                                                   prefect_harness: None,
                                                   prefect_server: tuple[str, dict[str, str]],  # noqa: F811
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    url, env = prefect_server
    # An uncommitted params.yaml change: the data it prepares is named by no commit (`sdm reproduce` below).
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["synth"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first, second = _scheduled_runs(project, url, env, tmp_path / "serve.log")
    print(f"scheduled runs: train {first['total_run_time']:.1f} s, up to date {second['total_run_time']:.1f} s")
    assert first["deployment_id"] and first["deployment_id"] == second["deployment_id"]
    assert first["auto_scheduled"] and second["auto_scheduled"], "the runs were not made by the schedule"
    one = server_summary(url, first["id"])
    two = server_summary(url, second["id"])
    assert "**decision**: scratch" in one and f"models:/{MODEL}/1" in one
    assert "# sdm retrain: up to date" in two and "champion v1 was trained on this data" in two

    # Run 1 (scheduled, from nothing): a prepared, DVC-tracked dataset (in dvc.lock, pushed to the remote).
    prepared = project / "data" / "prepared" / "synthetic"
    assert (prepared / "manifest.json").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["outs"][0]["path"] == "data/prepared/synthetic"
    assert any((project.parent / "remote").rglob("*")), "dvc push left nothing in the remote"
    data_version = _summary_field(one, "data version")
    assert data_version.startswith("dvc:") and "(unchanged: preparation skipped)" not in one
    assert data_version in one and "data:image/png;base64," in one, "the sample grid is not in the summary"
    # A registered version with its aliases and metrics; the up-to-date run made no other.
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    for alias in ("candidate", "champion"):
        assert str(client.get_model_version_by_alias(MODEL, alias).version) == "1"
    metrics = json.loads((Path(_summary_field(one, "checkpoint")).parent / "evaluation" / "metrics.json")
                         .read_text())
    # FID needs evaluate.min_fid_samples (10) images; the val split has 6.
    assert "miou@1.5" in metrics and "fid@1.5" not in metrics
    manifest_mtime = (prepared / "manifest.json").stat().st_mtime

    # Run 2, in this process, forced: unchanged data -> preparation skipped; one transient MLflow failure ->
    # retried. Trains on the session's Ray cluster (started only now: the serve process above ran its own).
    request.getfixturevalue("ray_cluster")
    import sdm.registry.register as register_module
    from flows.retrain import retrain

    real = register_module.register_checkpoint
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("tracking server unavailable (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(register_module, "register_checkpoint", flaky)
    forced = retrain(push=True, force=True)
    assert "-forced-" in forced["run_name"] and forced["plan"]["reason"].endswith("; --force")
    assert forced["data_cached"] and forced["data_version"] == data_version
    assert (prepared / "manifest.json").stat().st_mtime == manifest_mtime
    assert calls["n"] == 2, "the failed registration was not retried"
    assert forced["registration"]["version"] == "2"
    assert forced["run_name"] != re.match(r"# sdm retrain: (\S+)", one).group(1)

    # Its markdown summary: the data version (unchanged) and the sample grid.
    docs = [d for d in harness_summaries() if forced["run_name"] in d]
    assert docs, "the forced run left no retrain-summary artifact"
    assert all(data_version in d and "(unchanged: preparation skipped)" in d for d in docs)
    assert any("data:image/png;base64," in d for d in docs), "the sample grid is not in the summary"

    # 3. Reproduce v1 (issue 21) from the registry, the MLflow run's reproduce/ record and the DVC remote.
    from typer.testing import CliRunner

    from sdm.cli import app
    from sdm.registry.lineage import CHECKPOINT_SHA256_TAG

    assert subprocess.run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"], cwd=project,
                          capture_output=True, text=True, check=True).stdout.strip(), "nothing uncommitted"
    v1 = client.get_model_version(MODEL, "1").tags
    shutil.rmtree(prepared)
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(v1["lineage.train_run_path"])
    out = tmp_path / "reproduced"
    got = CliRunner().invoke(app, ["reproduce", f"models:/{MODEL}/1", "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "ray with 1 worker(s)" in got.output and "identical: the same weights, bit for bit" in got.output
    report = json.loads((out / "report.json").read_text())
    assert report["identical"] and report["sha256"] == v1[CHECKPOINT_SHA256_TAG]
    assert report["data_md5"].startswith(data_version.removeprefix("dvc:").split("@")[0])
    assert (out / "data" / "manifest.json").is_file() and not prepared.exists()
