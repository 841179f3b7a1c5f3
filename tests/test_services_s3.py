"""The DVC remote on the S3 API (issue 17, item 2): moto's S3 server on loopback as the endpoint.

The project is copied into a fresh git repo, its default remote switched to ``s3://<bucket>/sdm`` with
``endpointurl`` (the README's commands for a real bucket, plus the endpoint), and ``sdm data version``
reproduces and pushes the data. A fresh ``git clone`` of that commit ``dvc pull``s the same data, byte for
byte (sha256 of every file). ``sdm doctor`` writes a probe object through the same remote, and a remote whose
endpoint stops answering fails ``sdm data version`` in bounded time, before any stage runs.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _readme_harness import harness_env
from _s3_server import S3Endpoint, s3_env, s3_server  # noqa: F401 - fixtures

from sdm.config import DataConfig, to_dict
from sdm.services import ServiceError
from sdm.services.dvc_probe import probe_dvc_remote

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = ("data/raw/synthetic", "data/prepared/synthetic")


def sh(cmd: list[str], cwd: Path, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=harness_env(), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, ok)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC repo with this project's dvc.yaml and a params.yaml that makes 12 scenes (as
    tests/test_data_dvc.py builds it: the stages run the installed ``sdm``), no remote yet."""
    root = tmp_path / "a" / "sdm"
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "sdm" / "data", root / "sdm" / "data", ignore=shutil.ignore_patterns("__pycache__"))
    data = to_dict(DataConfig())
    data["synth"] = {"n": 12, "size": 32, "seed": 0}
    (root / "params.yaml").write_text(yaml.safe_dump({"data": data}, sort_keys=False))
    sh(["git", "init", "-q"], root)
    dvc("init", "-q", cwd=root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


def use_s3_remote(root: Path, s3: S3Endpoint) -> str:
    """The README's commands: an S3 remote as the default, its endpoint (an S3-compatible service)."""
    url = f"s3://{s3.bucket}/sdm"
    dvc("remote", "add", "-d", "storage", url, cwd=root)
    dvc("remote", "modify", "storage", "endpointurl", s3.url, cwd=root)
    return url


def digests(root: Path) -> dict[str, str]:
    out = {}
    for top in DATA:
        for p in sorted((root / top).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_version_pushes_to_s3_and_a_fresh_clone_pulls_the_same_bytes(tmp_path: Path, project: Path,
                                                                     s3_env: S3Endpoint):  # noqa: F811
    root = project
    use_s3_remote(root, s3_env)
    said = probe_dvc_remote(root)  # sdm doctor's check: a probe object written, read back, deleted
    assert f"s3://{s3_env.bucket}/sdm (endpointurl {s3_env.url})" in said and "remote 'storage'" in said

    out = sh([str(BIN / "sdm"), "data", "version"], root).stdout
    assert "data version: dvc:" in out
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_env.bucket).get("Contents", [])]
    assert keys and all(k.startswith("sdm/files/md5/") for k in keys), keys  # DVC's layout; the probe is gone
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "data on s3"], root)
    rev = sh(["git", "rev-parse", "HEAD"], root).stdout.strip()
    before = digests(root)
    assert len(before) > 10 and any(k.endswith(".parquet") for k in before)

    clone = tmp_path / "b" / "sdm"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    sh(["git", "checkout", "-q", rev], clone)
    assert not (clone / "data" / "prepared" / "synthetic").exists()
    dvc("pull", cwd=clone)
    assert digests(clone) == before


def test_a_missing_bucket_then_a_stopped_endpoint_fail_before_any_stage_runs(project: Path,
                                                                             s3_env: S3Endpoint):  # noqa: F811
    root = project
    dvc("remote", "add", "-d", "storage", "s3://no-such-bucket-sdm/sdm", cwd=root)
    dvc("remote", "modify", "storage", "endpointurl", s3_env.url, cwd=root)
    with pytest.raises(ServiceError) as missing:
        probe_dvc_remote(root)
    assert "no-such-bucket-sdm" in str(missing.value) and "create the bucket" in missing.value.fix

    dvc("remote", "modify", "storage", "url", f"s3://{s3_env.bucket}/sdm", cwd=root)
    s3_env.server.stop()  # the endpoint refuses connections now
    try:
        start = time.monotonic()
        proc = sh([str(BIN / "sdm"), "data", "version"], root, ok=False)
        took = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(ServiceError) as down:
            probe_dvc_remote(root, timeout_s=3)
        probe_took = time.monotonic() - start
    finally:
        s3_env.server.start()
    err = proc.stderr
    assert proc.returncode == 1, proc.stdout + err
    assert "DVC remote" in err and s3_env.url in err and "remote 'storage' in .dvc/config" in err, err
    assert "Running stage" not in proc.stdout and not (root / "data" / "raw" / "synthetic").exists()
    assert took < 60, took
    assert s3_env.url in str(down.value) and "endpointurl" in down.value.fix and probe_took < 10, probe_took
