"""Data versions: the prepared output's hash (from dvc.lock, else its manifest) + the git commit.

``data_version(prepared_dir)`` is what training and the registry record;
``repro_and_push`` is ``sdm data version``: ``dvc repro`` the stage, ``dvc push`` it.
DVC runs as a subprocess (``python -m dvc``) so its repo lock and state stay its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import yaml

from sdm.data.manifest import MANIFEST, read_manifest
from sdm.errors import InputError


class DataVersionError(RuntimeError):
    """A DVC or git step failed; the message says which and why.

    Not an InputError: the cause may be the project (no such stage, bad raw data) or
    an outage (the remote is unreachable), and ``sdm data version`` reports it as one
    message with exit code 1, like a failed training run. ``transient`` says which:
    True when DVC's output names a network failure (the flows retry it,
    :mod:`sdm.retry_policy`), False otherwise (not retried).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DvcTimeoutError(DataVersionError):
    """A DVC command outlived its time limit and was killed with its subprocesses (transient: retried)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


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


def lock_entry(prepared_dir: Path, root: Path) -> dict[str, Any] | None:
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
    entry = lock_entry(prepared_dir, root) if root else None
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


# DVC output that means the remote or the network failed (worth a retry), and output that means it will
# fail again (a full disk, no permission: checked first, it wins).
_DVC_NETWORK = re.compile(
    r"connection refused|connection reset|cannot connect to host|could not connect|connect(ion)? time(d)? ?out|"
    r"timed out|timeout|temporary failure in name resolution|network is unreachable|no route to host|"
    r"server disconnected|remote end closed|broken pipe|\b(500|502|503|504|429), message=|"
    r"service unavailable|bad gateway|gateway time-?out|internal server error|too many requests",
    re.IGNORECASE,
)
_DVC_PERMANENT = re.compile(r"no space left on device|disk quota exceeded|permission denied|read-only file system|"
                            r"operation not permitted|\b(401|403|404), message=|unauthorized|forbidden", re.IGNORECASE)
# How much of a failed command's output the error keeps (its end: where DVC says what went wrong).
_TAIL_BYTES = 64 * 1024
# After SIGTERM, how long DVC gets to release its repo lock before the group is killed outright.
_TERM_GRACE_S = 5.0


def dvc_output_is_transient(output: str) -> bool:
    """True when a failed DVC command's output names a network / remote outage and no permanent cause."""
    return not _DVC_PERMANENT.search(output) and bool(_DVC_NETWORK.search(output))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, then SIGKILL what is left of it after a grace period."""
    for sig, wait in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the group is gone
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # The leader exited; its children may not have: the group gets a SIGKILL all the same.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


def _pump(stream: IO[bytes], tail: bytearray, echo: bool) -> None:
    """Copy the command's output to ours (DVC's progress stays visible) and keep its last bytes."""
    for line in iter(stream.readline, b""):
        if echo:
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
        tail.extend(line)
        del tail[:-_TAIL_BYTES]
    stream.close()


def run_dvc(args: list[str], root: Path, timeout_s: float | None = None, echo: bool = True) -> str:
    """Run ``dvc ARGS`` in ``root`` (its output echoed) and return the end of its output.

    ``timeout_s`` (None or 0: no limit) bounds the whole command: past it, the
    command's process group (DVC and whatever it started) is terminated, then
    killed, and :class:`DvcTimeoutError` names the command and the limit. A
    failure raises :class:`DataVersionError` with the end of DVC's output,
    ``transient`` when that output names a network or remote outage.
    """
    command = f"dvc {' '.join(args)}"
    # Its own session: the timeout kills DVC's children (stage commands, transfer workers) with it.
    proc = subprocess.Popen([*dvc_command(), *args], cwd=root, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    tail = bytearray()
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, tail, echo), daemon=True, name="sdm-dvc-output")
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s or None)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=5)
        raise DvcTimeoutError(
            f"`{command}` did not finish within {timeout_s:g} s (data.dvc_timeout_s) in {root}: killed it and "
            "its subprocesses; check the remote (`dvc remote list`, the network) or raise data.dvc_timeout_s"
        ) from None
    except BaseException:  # Ctrl-C or an error here: leave no DVC process behind holding the repo lock
        _kill_group(proc)
        raise
    reader.join(timeout=30)
    output = tail.decode(errors="replace")
    if code != 0:
        last = "\n".join(output.strip().splitlines()[-15:])
        raise DataVersionError(f"`{command}` failed (exit {code}) in {root}:\n{last}",
                               transient=dvc_output_is_transient(output))
    return output


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


# How long the remote gets to answer before `sdm data version` starts work it could not push.
REMOTE_PROBE_TIMEOUT_S = 15.0


def require_remote(root: Path) -> None:
    """The default remote is configured and answers (``sdm.services.dvc_probe``), before any stage runs.

    Not configured: a ServiceError (bad input, exit 2). No answer: a transient DataVersionError (the flows
    retry it) in about REMOTE_PROBE_TIMEOUT_S, instead of a push that hangs until data.dvc_timeout_s."""
    from sdm.services.dvc_probe import probe_dvc_remote

    try:
        probe_dvc_remote(root, timeout_s=REMOTE_PROBE_TIMEOUT_S, write=False)
    except InputError as e:
        if getattr(e, "transient", False):
            raise DataVersionError(str(e), transient=True) from None
        raise


def repro_and_push(stage: str, root: Path, push: bool = True, timeout_s: float | None = None,
                   repro_timeout_s: float | None = None) -> dict[str, Any]:
    """``dvc repro <stage>`` (+ ``dvc push <stage>``); returns ``data_version_info`` of its output.

    ``timeout_s`` bounds the push, ``repro_timeout_s`` the repro (None: ``data.dvc_timeout_s`` /
    ``data.dvc_repro_timeout_s`` of the project's params.yaml, else their defaults).
    """
    if stage not in stage_names(root):
        raise InputError(
            f"{root / 'dvc.yaml'} has no stage {stage!r} (stages: {', '.join(stage_names(root))}); "
            "data/README.md shows how to add a prepare stage for a downloaded dataset"
        )
    if timeout_s is None or repro_timeout_s is None:
        from sdm.config import resolve

        params = root / "params.yaml"
        data = resolve(params=params if params.is_file() else None).data
        timeout_s = data.dvc_timeout_s if timeout_s is None else timeout_s
        repro_timeout_s = data.dvc_repro_timeout_s if repro_timeout_s is None else repro_timeout_s
    if push:
        require_remote(root)
    run_dvc(["repro", stage], root, timeout_s=repro_timeout_s)
    if push:
        run_dvc(["push", "--with-deps", stage], root, timeout_s=timeout_s)
    info = data_version_info(stage_out(root, stage))
    status = _git(["status", "--porcelain", "--", "dvc.lock"], root)
    info["lock_uncommitted"] = bool(status)
    return info
