"""The DVC pipeline in a temp git repo: repro, no-op second repro, push, and reproducing an older data version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdm.config import DataConfig, to_dict
from sdm.data.manifest import read_manifest
from sdm.data.version import data_version_info

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def set_n(repo: Path, n: int) -> None:
    """params.yaml with the whole data section (dvc.yaml reads data.source and data.prepared from it)."""
    data = to_dict(DataConfig())
    data["synth"] = {"n": n, "size": 32, "seed": 0}
    (repo / "params.yaml").write_text(yaml.safe_dump({"data": data}, sort_keys=False))


@pytest.fixture
def repo(tmp_path):
    """A fresh git + DVC repo with this project's dvc.yaml, .dvcignore and data code, and a local remote."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")  # it ignores sdm's lock files beside the data outputs
    shutil.copytree(REPO / "sdm" / "data", repo / "sdm" / "data", ignore=shutil.ignore_patterns("__pycache__"))
    set_n(repo, 12)
    sh(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "init"], repo)
    return repo


def lock_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"]["prepare"]["outs"][0]["md5"].removesuffix(".dir")


def test_repro_version_and_reproduce_an_older_version(repo):
    out = sh(["sdm", "data", "version"], repo)
    assert "Running stage 'synth'" in out and "Running stage 'prepare'" in out
    prepared = repo / "data" / "prepared" / "synthetic"
    assert sum(read_manifest(prepared).counts.values()) == 12
    head = sh(["git", "rev-parse", "HEAD"], repo).strip()
    v1 = f"dvc:{lock_md5(repo)[:12]}@{head[:12]}"
    assert f"data version: {v1}" in out and "commit it to record this version" in out
    # DVC wrote the .gitignore entries: the data never goes into git.
    assert (repo / "data" / "prepared" / ".gitignore").read_text().strip() == "/synthetic"
    assert "data/" not in sh(["git", "status", "--porcelain", "--untracked-files=all"], repo).replace(
        "data/raw/.gitignore", "").replace("data/prepared/.gitignore", "")

    # Unchanged inputs: the second repro does nothing.
    stamps = {p: p.stat().st_mtime_ns for p in prepared.iterdir()}
    again = dvc("repro", "prepare", cwd=repo)
    assert "Stage 'prepare' didn't change, skipping" in again and "Running stage" not in again
    assert {p: p.stat().st_mtime_ns for p in prepared.iterdir()} == stamps
    sh(["git", "add", "dvc.lock", "data/raw/.gitignore", "data/prepared/.gitignore"], repo)
    sh(["git", "commit", "-qm", "data v1"], repo)
    rev1 = sh(["git", "rev-parse", "HEAD"], repo).strip()
    manifest1 = read_manifest(prepared)

    # A parameter change makes a new version.
    set_n(repo, 15)
    out = sh(["sdm", "data", "version"], repo)
    assert sum(read_manifest(prepared).counts.values()) == 15
    sh(["git", "commit", "-qam", "data v2"], repo)
    assert lock_md5(repo)[:12] != v1.split(":")[1][:12]

    # Reproduce v1 from the remote alone: git checkout REV; dvc pull.
    sh(["git", "checkout", "-q", rev1], repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "prepared" / "synthetic")
    shutil.rmtree(repo / "data" / "raw" / "synthetic")
    dvc("pull", cwd=repo)
    assert read_manifest(prepared) == manifest1
    info = data_version_info(prepared)
    assert info["hash_source"] == "dvc.lock" and info["version"] == f"dvc:{v1.split(':')[1].split('@')[0]}@{rev1[:12]}"
    assert "up to date" in dvc("status", cwd=repo)


def test_version_of_a_missing_stage_explains(repo):
    proc = subprocess.run([str(BIN / "sdm"), "data", "version", "--dataset", "ade20k", "--no-push"], cwd=repo,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no stage 'prepare-ade20k'" in proc.stderr and "data/README.md" in proc.stderr
