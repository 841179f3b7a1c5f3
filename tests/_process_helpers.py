"""Child processes for fault tests: start a Python script, wait until it reports a point, SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_child(script: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Run ``script`` (dedented) in a fresh interpreter; its stdout is a pipe of lines."""
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd)


def wait_for(proc: subprocess.Popen, word: str, timeout: float = 60.0) -> str:
    """Block until the child prints a line starting with ``word``; return that line (fail if it exits first)."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"child exited ({proc.returncode}) before {word!r}:\n{err}")
        if line.startswith(word):
            return line.strip()
    proc.kill()
    raise AssertionError(f"child did not reach {word!r} in {timeout} s")


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no finally, no atexit runs in the child."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def tree_digest(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``root`` (the whole content, to compare before/after)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
