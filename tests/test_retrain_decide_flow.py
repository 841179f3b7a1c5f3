"""The `retrain` flow decides first: resume an interrupted run, then up to date, then continue from the champion.

One test on the tiny pipeline project of tests/_pipeline_project.py (training is the expensive part, so
each run does one thing): an interrupted run (a checkpoint at pretrain step 2 of 4, no final) is
resumed and registered as the champion; a rerun with nothing changed trains nothing and registers
nothing; a data change (``data.synth.n`` in params.yaml) continues from the champion; an
architecture change would train from scratch (the plan, which needs no training to check).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from _pipeline_project import harness_summaries, project, sh  # noqa: F401  (the project fixture)

from sdm.config import resolve

pytestmark = pytest.mark.slow


def _set_params(proj: Path, **changes: object) -> None:
    """Edit the project's params.yaml (``"data.synth.n": 28``) and commit it, as a team would."""
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "commit", "-qam", f"params: {changes}"], proj)


def test_retrain_resumes_then_is_up_to_date_then_continues(project: Path, mlflow_uri: str,  # noqa: F811
                                                            prefect_harness: None, ray_cluster: None) -> None:
    """The two runs that train use the session's Ray cluster (one start, not one per run)."""
    from flows.retrain import retrain
    from sdm.data.version import data_version, run_dvc, stage_out
    from sdm.registry.retrain_plan import plan_retrain
    from sdm.train import train

    # An interrupted run: the data prepared, then the run the plan names stopped at pretrain step 2 of 4.
    run_dvc(["repro", "prepare"], project)
    config = resolve(params="params.yaml")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, prepared=str(stage_out(project,
                                                                                                      "prepare"))))
    plan = plan_retrain(config, data_version(config.data.prepared))
    assert plan.action == "scratch"
    short = dataclasses.replace(config, train=dataclasses.replace(
        config.train, pretrain=dataclasses.replace(config.train.pretrain, steps=2)))
    run_dir = train(short, run_name=plan.run_name, phase="pretrain", local=True, log_mlflow=False).run_dir
    shutil.rmtree(run_dir / "final")  # the crash came before the end

    first = retrain(push=False)
    assert first["plan"]["action"] == "resume" and first["run_name"] == plan.run_name
    assert "was interrupted at checkpoint-pretrain-0000002" in first["plan"]["reason"]
    starts = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    starts = [e for e in starts if e["event"] == "phase_start"]
    assert starts[-2]["phase"] == "pretrain" and starts[-2]["resumed_from"] == "checkpoint-pretrain-0000002"
    assert starts[-2]["start_step"] == 2
    assert first["registration"]["version"] == "1"
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    v1 = client.get_model_version("sdm-pipeline-test", "1")
    assert v1.tags["lineage.fingerprint"] == plan.fingerprint.combined
    assert v1.tags["lineage.init_from"] == "none"

    # Nothing changed: no training, no new version, the summary says why.
    second = retrain(push=False)
    assert second["plan"]["action"] == "up-to-date"
    assert second["plan"]["reason"] == ("up to date: champion v1 was trained on this data, these params "
                                        "and this code")
    assert len(client.search_model_versions("name='sdm-pipeline-test'")) == 1
    assert any("up to date: champion v1" in doc for doc in harness_summaries())

    # New data: continue from the champion for retrain.continue_steps (2 in TINY) finetune steps.
    _set_params(project, **{"data.synth.n": 28})
    third = retrain(push=False)
    assert third["plan"]["action"] == "continue", third["plan"]["reason"]
    assert "data changed" in third["plan"]["reason"]
    assert third["data_version"] != first["data_version"]
    v2 = client.get_model_version("sdm-pipeline-test", third["registration"]["version"])
    assert v2.tags["lineage.init_from"] == "models:/sdm-pipeline-test/1"
    assert v2.tags["lineage.retrain_action"] == "continue"
    meta = json.loads((Path(third["checkpoint"]) / "meta.json").read_text())
    assert meta["phases"] == {"finetune": 2}
    # Compared on equal terms: the champion (v1) evaluated on the NEW data with the same settings and segmenter.
    champ = third["champion"]
    assert champ["version"] == "1" and champ["data_version"] == third["data_version"]
    champ_eval = json.loads((Path(champ["eval_dir"]) / "evaluation.json").read_text())
    own_eval = json.loads((Path(third["evaluation"]) / "evaluation.json").read_text())
    for key in ("data_version", "num_images", "repeats", "sampler", "steps", "guidance_scales", "segmenter"):
        assert champ_eval[key] == own_eval[key], key
    assert v2.tags["promotion.basis"] == "equal terms" and "champion.metrics.fsd_at_1.5" in v2.tags
    # The version's source run is its training run, holding the side-by-side grid; the summary shows it.
    assert v2.run_id == meta["mlflow_run_id"]
    assert {Path(a.path).name for a in client.list_artifacts(v2.run_id, "comparison")} == {"grid.png",
                                                                                        "comparison.md"}
    assert "| metric | challenger | champion v1 | change |" in v2.description
    assert any("## Champion vs challenger" in d and "![champion vs challenger](data:image/png;base64," in d
               for d in harness_summaries())

    # Another architecture: auto plans a scratch run and names the key (the plan alone: no training needed).
    _set_params(project, **{"model.model_channels": 16})
    changed = resolve(params="params.yaml")
    wide = plan_retrain(changed, third["data_version"])
    assert wide.action == "scratch" and "model.model_channels 32 -> 16" in wide.reason
