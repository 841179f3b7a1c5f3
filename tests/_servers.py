"""Real servers for fault tests: start a server process on 127.0.0.1, wait until it is healthy, stop it by pid.

``ServerProcess`` is general (any command line with a ``{port}`` and a health
URL); ``mlflow_server_process`` builds the MLflow tracking server (sqlite
backend, ``--artifacts-destination`` in a temp folder). The server is started
in its own session, so its process group is exactly what it started (MLflow's
CLI runs uvicorn as a child): stop() signals that group, by the pid we hold,
never by name.

Fixtures (registered in conftest.py):

- ``mlflow_server``: one MLflow server per test session (starting one takes
  seconds), stopped in teardown;
- ``live_mlflow``: per test, the same server running (restarted when an earlier
  test stopped it) with ``MLFLOW_TRACKING_URI`` pointing at it. A test stops it
  with ``live_mlflow.stop(signal.SIGKILL)`` (or SIGTERM) and may ``start()`` it again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess: ``argv(port)`` started on a fixed free port, healthy when ``health_path`` answers 200."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], health_path: str, log_file: Path,
                 env: dict[str, str] | None = None, start_timeout: float = 120.0) -> None:
        self.name = name
        self.port = free_port()  # kept across restarts: clients keep their URI
        self._argv = argv
        self.health_path = health_path
        self.log_file = Path(log_file)
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> ServerProcess:
        """Start the server (if not running) and wait until it is healthy; its output goes to ``log_file``."""
        if self.running and self.healthy():
            return self
        self.stop()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self._argv(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(self.env or {})}, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting; see "
                                   f"{self.log_file}:\n{self.log_file.read_text()[-3000:]}")
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"{self.name} did not answer {self.url}{self.health_path} within {self.start_timeout} s; "
                           f"see {self.log_file}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Signal the server's process group (the pid we started leads it); SIGKILL if it outlives ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(proc.pid, s)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children of the group (uvicorn workers) may outlive the leader by a moment: wait for the port.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.healthy(timeout=0.5):
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        except (ProcessLookupError, PermissionError):
            pass


def mlflow_server_process(root: Path) -> ServerProcess:
    """An MLflow tracking server: sqlite backend and served artifacts under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    mlflow_cli = Path(sys.executable).with_name("mlflow")

    def argv(port: int) -> list[str]:
        return [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination", str(root / "artifacts")]

    # 240 s as the README harness allows the same server: on a loaded 2-core machine it starts in over 120 s.
    return ServerProcess("mlflow server", argv, "/health", root / "server.log", start_timeout=240)


@pytest.fixture(scope="session")
def mlflow_server(session_home: Path) -> Iterator[ServerProcess]:
    """One MLflow tracking server for the session, stopped (by pid) at its end."""
    server = mlflow_server_process(session_home / "mlflow-server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_mlflow(mlflow_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """The session's MLflow server, running, with ``MLFLOW_TRACKING_URI`` set to it for this test."""
    mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.delenv("SDM_MLFLOW_ARTIFACTS", raising=False)  # the server decides where artifacts go
    return mlflow_server
