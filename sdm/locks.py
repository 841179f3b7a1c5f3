"""One writer at a time: locks on a run folder, a data output and the pipeline.

A lock is an ``flock`` on ``<parent>/.<name>.sdm-lock`` beside its target (the
``filelock`` package), never inside a folder that gets swapped. A second
holder fails at once, with the first holder's pid, host, start time and
command, read from the sidecar ``.<name>.sdm-lock.json`` the holder writes.
The kernel releases an ``flock`` when its holder dies, however it dies, so a
crashed run's lock is simply free for the next one (the stale sidecar is
overwritten). Lock files stay after release: unlinking a lock file that
another process has open would let two processes hold "the" lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from sdm.errors import InputError

LOCK_SUFFIX = ".sdm-lock"


class LockBusyError(InputError):
    """Another live process holds the lock; the message names it (pid, host, start time, command)."""


def lock_path_for(target: str | Path) -> Path:
    """The lock file of ``target``: ``<parent>/.<name>.sdm-lock`` (absolute)."""
    target = Path(target).resolve()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder_path(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".json")


def read_holder(lock_file: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``lock_file`` (who holds or last held it), or None."""
    try:
        doc = json.loads(_holder_path(Path(lock_file)).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (it has not written its details yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command') or 'unknown command'})")


def _write_holder(lock_file: Path, what: str) -> dict[str, Any]:
    doc = {"pid": os.getpid(), "host": socket.gethostname(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "", "what": what}
    path = _holder_path(lock_file)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)  # a reader sees the old or the new holder, never half of one
    return doc


@contextmanager
def hold_lock(lock_file: str | Path, what: str) -> Iterator[dict[str, Any]]:
    """Hold ``lock_file`` for the block (``what`` names the locked thing in messages); yields the holder record.

    Raises ``LockBusyError`` at once (no waiting) when another process, or
    another ``hold_lock`` of this process, holds it.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file), blocking=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockBusyError(f"{what} is in use by {_describe(read_holder(lock_file))}; lock file {lock_file}. "
                            "Wait for it to finish (a crashed holder frees the lock by itself)") from None
    try:
        yield _write_holder(lock_file, what)
    finally:
        # The holder record goes first, while the lock is still ours: no one else can be writing it.
        _holder_path(lock_file).unlink(missing_ok=True)
        lock.release()


@contextmanager
def lock_target(target: str | Path, what: str) -> Iterator[dict[str, Any]]:
    """:func:`hold_lock` on the lock file beside ``target`` (a run folder, a data output)."""
    with hold_lock(lock_path_for(target), what) as holder:
        yield holder
