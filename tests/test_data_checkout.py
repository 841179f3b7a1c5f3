"""`sdm data checkout`: prepared data back from the DVC remote by its hash, whether or not a commit names it.

A scratch git + DVC project (this repo's dvc.yaml and data code, a local directory remote) prepares and
pushes data from an UNCOMMITTED params.yaml change: no commit's dvc.lock names that data, so
`git checkout REV && dvc pull` cannot bring it back; `sdm data checkout <data version>` does, byte for
byte. Then the errors: a hash nobody knows, a remote without the data, a folder sdm did not make;
each names what is wrong and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdm.config import DataConfig, to_dict

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def set_n(repo: Path, n: int) -> None:
    data = to_dict(DataConfig())
    data["synth"] = {"n": n, "size": 32, "seed": 0}
    (repo / "params.yaml").write_text(yaml.safe_dump({"data": data}, sort_keys=False))


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if name in p.name)


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[Path, str, str]:
    """(project, data version, full md5): data prepared from an uncommitted params change and pushed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    shutil.copytree(REPO / "sdm" / "data", repo / "sdm" / "data", ignore=shutil.ignore_patterns("__pycache__"))
    set_n(repo, 12)
    sh(["git", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "init"], repo)
    set_n(repo, 14)  # uncommitted: the data it makes is named by no commit
    out = sh([str(BIN / "sdm"), "data", "version"], repo).stdout
    version = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("data version: "))
    assert sh(["git", "status", "--porcelain", "--", "params.yaml"], repo).stdout.strip(), "params.yaml committed?"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = lock["stages"]["prepare"]["outs"][0]["md5"]
    assert version.startswith(f"dvc:{md5[:12]}@")
    # No commit names it: dvc.lock was never committed.
    assert sh(["git", "log", "--all", "--format=%H", "--", "dvc.lock"], repo).stdout.strip() == ""
    return repo, version, md5


def checkout(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return sh([str(BIN / "sdm"), "data", "checkout", *args], repo, ok=False)


def test_checkout_of_a_version_no_commit_names(pushed: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, version, md5 = pushed
    prepared = repo / "data" / "prepared" / "synthetic"
    expected = digests(prepared)
    # Only the remote has it now: no prepared folder, no DVC cache, no dvc.lock to read the full md5 from
    # (the 12-digit prefix is looked up by listing the remote).
    shutil.rmtree(prepared)
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "dvc.lock").unlink()
    target = tmp_path / "restored" / "synthetic"
    proc = checkout(repo, version, "--out", str(target))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "found by remote listing" in proc.stdout and md5 in proc.stdout
    assert digests(target) == expected and len(expected) > 2
    assert leftovers(target.parent, "synthetic") == ["synthetic"], "the checkout left temp folders behind"

    # Again over its own output (prepared data sdm made): replaced, same bytes; by the full md5 this time.
    proc = checkout(repo, md5, "--out", str(target))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert digests(target) == expected


def test_checkout_errors_name_the_problem_and_leave_nothing(pushed: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, version, md5 = pushed
    remote = tmp_path / "remote"
    target = tmp_path / "out" / "data"

    # A hash nobody knows (not in dvc.lock, its history or the remote).
    proc = checkout(repo, "dvc:0123456789ab@deadbeefdead", "--out", str(target))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "0123456789ab" in proc.stderr and "DVC remote 'local'" in proc.stderr and str(remote) in proc.stderr

    # Not DVC data, and not a version at all.
    proc = checkout(repo, "manifest:0123456789ab@deadbeefdead", "--out", str(target))
    assert proc.returncode == 2 and "not DVC data" in proc.stderr
    proc = checkout(repo, "yesterday", "--out", str(target))
    assert proc.returncode == 2 and "expected dvc:<md5>@<commit>" in proc.stderr

    # A folder the user filled is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = checkout(repo, version, "--out", str(mine))
    assert proc.returncode == 2 and "not a folder sdm made" in proc.stderr
    assert (mine / "notes.txt").read_text() == "keep me"

    # The remote lost the data (dvc.lock still knows the md5): named, nothing written.
    shutil.rmtree(remote)
    remote.mkdir()
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    proc = checkout(repo, version, "--out", str(target))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"does not hold md5 {md5}" in proc.stderr and str(remote) in proc.stderr
    assert not target.exists() and (not target.parent.exists() or leftovers(target.parent, "data") == [])
