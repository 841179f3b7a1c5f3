"""data_version: the dvc.lock hash when it matches the folder, else the manifest's sha256; plus the git commit."""

from __future__ import annotations

import hashlib
import os
import subprocess

import yaml

from sdm.data.prepare import prepare
from sdm.data.synthetic import synthesize
from sdm.data.version import _dir_stats, data_version, data_version_info


def test_manifest_hash_off_dvc_and_git(tmp_path):
    synthesize(tmp_path / "raw", n=4, size=32, seed=0)
    prepare("folder", tmp_path / "raw", tmp_path / "prep", [32, 32])
    digest = hashlib.sha256((tmp_path / "prep" / "manifest.json").read_bytes()).hexdigest()
    info = data_version_info(tmp_path / "prep")
    assert info["hash_source"] == "manifest" and info["hash"] == digest
    assert data_version(tmp_path / "prep") == f"manifest:{digest[:12]}@nogit"


def test_lock_hash_only_while_the_folder_matches_it(tmp_path):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True,
                   env={**os.environ, **env})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / ".dvc").mkdir()
    synthesize(tmp_path / "raw", n=4, size=32, seed=0)
    prep = tmp_path / "data" / "prep"
    prepare("folder", tmp_path / "raw", prep, [32, 32])
    nfiles, size = _dir_stats(prep)
    lock = {"schema": "2.0", "stages": {"prepare": {"cmd": "sdm data prepare", "outs": [
        {"path": "data/prep", "hash": "md5", "md5": "0123456789abcdef0123456789abcdef.dir",
         "size": size, "nfiles": nfiles}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    info = data_version_info(prep)
    assert info["hash_source"] == "dvc.lock" and info["stage"] == "prepare"
    assert info["version"] == f"dvc:0123456789ab@{commit[:12]}"
    # The folder changed after the lock was written: the lock no longer names it.
    (prep / "extra.txt").write_text("edited by hand")
    assert data_version(prep).startswith("manifest:")
