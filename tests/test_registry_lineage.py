"""Lineage tags: code, data, parameters and training run of a checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sdm.registry.lineage import git_commit, git_dirty, lineage_tags, params_hash, train_run_path


def test_params_hash_is_canonical_and_sensitive() -> None:
    a = {"model": {"num_classes": 12, "image_size": [32, 32]}, "sample": {"steps": 25}}
    b = {"sample": {"steps": 25}, "model": {"image_size": [32, 32], "num_classes": 12}}
    assert params_hash(a) == params_hash(b) and len(params_hash(a)) == 64
    assert params_hash(a) != params_hash({**a, "sample": {"steps": 26}})


def test_git_commit_inside_and_outside_git(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_commit() == head
    assert git_commit(tmp_path) == "unknown" and git_dirty(tmp_path) == "unknown"


def test_train_run_path_is_the_run_folder_of_a_final_checkpoint(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "nightly" / "final"
    assert train_run_path(final, {"run_name": "nightly"}) == str(tmp_path / "runs" / "nightly")
    assert train_run_path(final, {}) == str(final)  # not confirmed by meta.json: the checkpoint itself
    assert train_run_path(tmp_path / "ckpt", {"run_name": "nightly"}) == str(tmp_path / "ckpt")


def test_lineage_tags_from_meta_and_config(tmp_path: Path) -> None:
    config = {"data": {"prepared": "data/prepared/synthetic"}, "preset": "toy"}
    meta = {"run_name": "r1", "data_version": "dv-123", "mlflow_run_id": "run42", "step": 1500}
    tags = lineage_tags(tmp_path / "r1" / "final", config, meta)
    assert tags["lineage.data_version"] == "dv-123" and tags["lineage.train_mlflow_run_id"] == "run42"
    assert tags["lineage.train_run_path"] == str(tmp_path / "r1") and tags["lineage.train_step"] == "1500"
    assert tags["lineage.params_hash"] == params_hash(config)
    assert tags["lineage.data_prepared"] == "data/prepared/synthetic"
    bare = lineage_tags(tmp_path / "x", {}, {})
    assert bare["lineage.data_version"] == "unknown" and bare["lineage.train_mlflow_run_id"] == "unknown"
    assert all(isinstance(v, str) for v in tags.values())
