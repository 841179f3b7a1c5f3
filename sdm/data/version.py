"""Data versions: the prepared output's hash (from dvc.lock, else its manifest) + the git commit.

``data_version(prepared_dir)`` is what training and the registry record;
``repro_and_push`` is ``sdm data version``: ``dvc repro`` the stage, ``dvc push`` it.
DVC runs as a subprocess (``python -m dvc``) so its repo lock and state stay its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sdm.data.manifest import MANIFEST, read_manifest
from sdm.errors import InputError


class DataVersionError(RuntimeError):
    """A DVC or git step failed; the message says which and why.

    Not an InputError: the cause may be the project (no such stage, bad raw data) or
    an outage (the remote is unreachable), so the flows retry it and ``sdm data
    version`` reports it as one message with exit code 1, like a failed training run.
    """


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path if path.is_dir() else path.parent


def find_dvc_root(start: str | Path = ".") -> Path | None:
    """The nearest folder at or above ``start`` that has a ``.dvc`` folder."""
    path = _existing(Path(start))
    for p in [path, *path.parents]:
        if (p / ".dvc").is_dir():
            return p
    return None


def _dir_stats(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _lock_entry(prepared_dir: Path, root: Path) -> dict[str, Any] | None:
    """The dvc.lock out entry (with its stage name) whose path is ``prepared_dir``."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    target = prepared_dir.resolve()
    for stage, entry in (data.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if (root / out["path"]).resolve() == target:
                return {**out, "stage": stage}
    return None


def data_version_info(prepared_dir: str | Path) -> dict[str, Any]:
    """{"version", "hash", "hash_source": "dvc.lock"|"manifest", "git_commit", "stage", "format", "counts"}.

    The dvc.lock hash is used only when the folder still matches what the lock
    recorded (file count and size); otherwise the manifest's sha256 (which
    covers every shard's sha256) names the data, and ``hash_source`` says so.
    """
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    root = find_dvc_root(prepared_dir)
    commit = _git(["rev-parse", "HEAD"], _existing(prepared_dir)) or "nogit"
    entry = _lock_entry(prepared_dir, root) if root else None
    info: dict[str, Any] = {"git_commit": commit, "stage": None, "format": manifest.format,
                            "counts": manifest.counts}
    if entry and entry.get("md5") and (entry.get("nfiles"), entry.get("size")) == _dir_stats(prepared_dir):
        info.update(hash=entry["md5"].removesuffix(".dir"), hash_source="dvc.lock", stage=entry["stage"])
    else:
        info.update(hash=hashlib.sha256((prepared_dir / MANIFEST).read_bytes()).hexdigest(), hash_source="manifest")
    prefix = "dvc" if info["hash_source"] == "dvc.lock" else "manifest"
    info["version"] = f"{prefix}:{info['hash'][:12]}@{commit[:12]}"
    return info


def data_version(prepared_dir: str | Path) -> str:
    """``dvc:<md5 of the prepared dir, 12>@<git commit, 12>`` (``manifest:<sha256>@...`` off DVC)."""
    return data_version_info(prepared_dir)["version"]


def dvc_command() -> list[str]:
    return [sys.executable, "-m", "dvc"]


def _env() -> dict[str, str]:
    """The environment for DVC stage commands: this interpreter's scripts (``sdm``) on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_dvc(args: list[str], root: Path) -> None:
    proc = subprocess.run([*dvc_command(), *args], cwd=root, env=_env())
    if proc.returncode != 0:
        raise DataVersionError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}) in {root}; "
                               "see its output above")


def stage_out(root: Path, stage: str) -> Path:
    """The first output of ``stage`` as recorded in dvc.lock."""
    data = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    entry = (data.get("stages") or {}).get(stage)
    if not entry or not entry.get("outs"):
        raise DataVersionError(f"{root / 'dvc.lock'}: no outputs recorded for stage {stage!r}")
    return root / entry["outs"][0]["path"]


def stage_names(root: Path) -> list[str]:
    data = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return list((data.get("stages") or {}).keys())


def repro_and_push(stage: str, root: Path, push: bool = True) -> dict[str, Any]:
    """``dvc repro <stage>`` (+ ``dvc push <stage>``); returns ``data_version_info`` of its output."""
    if stage not in stage_names(root):
        raise InputError(
            f"{root / 'dvc.yaml'} has no stage {stage!r} (stages: {', '.join(stage_names(root))}); "
            "data/README.md shows how to add a prepare stage for a downloaded dataset"
        )
    run_dvc(["repro", stage], root)
    if push:
        run_dvc(["push", "--with-deps", stage], root)
    info = data_version_info(stage_out(root, stage))
    status = _git(["status", "--porcelain", "--", "dvc.lock"], root)
    info["lock_uncommitted"] = bool(status)
    return info
