"""DVC commands have a time limit: a hanging remote is killed (with DVC's subprocesses) and retried as a timeout.

The remote is real DVC over HTTP to a fake server on loopback that accepts
connections and never answers; the push task is the pipeline's own
(``flows.tasks.push_data``), retried by its retry policy.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdm.data.version import DataVersionError, DvcTimeoutError, dvc_output_is_transient, run_dvc
from sdm.retry_policy import classify


class HangingServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte.

    ``accepted`` counts connections; ``open`` those whose peer has not closed them yet.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.setblocking(False)
            self.conns.append(conn)

    @property
    def accepted(self) -> int:
        return len(self.conns)

    def open(self) -> int:
        """Connections the client still holds (reading b"" means it closed its end: its process is gone)."""
        alive = 0
        for conn in self.conns:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def _dvc(args: list[str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture
def project(tmp_path: Path, hanging: HangingServer) -> Path:
    """A DVC project with one stage ``prepare`` (its output in the cache) and the hanging server as default remote."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    _dvc(["init", "-q"], root)
    (root / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: echo prepared > out.txt\n    outs:\n"
                                   "      - out.txt\n")
    _dvc(["repro", "-q", "prepare"], root)
    _dvc(["remote", "add", "-d", "hang", f"http://127.0.0.1:{hanging.port}/store"], root)
    return root


@pytest.mark.slow
def test_a_hanging_push_is_killed_at_its_timeout_with_its_subprocesses(project: Path, hanging: HangingServer,
                                                                        capsys: pytest.CaptureFixture) -> None:
    # Long enough for DVC (~2-6 s to start on a loaded machine) to reach the remote and hang there.
    limit = 15.0
    start = time.monotonic()
    with pytest.raises(DvcTimeoutError) as info:
        run_dvc(["push"], project, timeout_s=limit)
    elapsed = time.monotonic() - start
    # The limit, then at most the SIGTERM grace (5 s) and the SIGKILL wait.
    assert limit <= elapsed < limit + 12, elapsed
    message = str(info.value)
    assert "`dvc push`" in message and "within 15 s" in message and "data.dvc_timeout_s" in message
    assert classify(info.value).retry
    assert hanging.accepted >= 1, "DVC never reached the fake remote: the test did not test a hang"
    deadline = time.monotonic() + 5
    while hanging.open() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hanging.open() == 0, "a DVC process still holds its connection: the process group was not killed"


@pytest.mark.slow
def test_push_task_retries_a_timeout_the_configured_times(project: Path, prefect_harness: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.tasks as tasks
    from sdm.config import resolve

    attempts: list[float] = []
    real = tasks.run_dvc

    def counted(args: list[str], root: Path, timeout_s: float | None = None, echo: bool = True) -> str:
        attempts.append(timeout_s or 0.0)
        return real(args, root, timeout_s=timeout_s, echo=echo)

    monkeypatch.setattr(tasks, "run_dvc", counted)
    monkeypatch.chdir(project)
    config = resolve(params=None, overrides=["data.dvc_timeout_s=2"])
    start = time.monotonic()
    with pytest.raises(DvcTimeoutError, match=r"`dvc push --with-deps prepare` did not finish within 2 s"):
        tasks.push_data.with_options(retries=2, retry_delay_seconds=0)(config)
    assert attempts == [2.0, 2.0, 2.0], "a timed-out push is retried retries=2 times, with the configured limit"
    assert time.monotonic() - start < 3 * (2 + 12)


def test_dvc_failure_output_is_classified() -> None:
    # Output as DVC prints it for an unreachable / failing HTTP remote, and for local problems.
    assert dvc_output_is_transient("ERROR: failed to push data to the cloud - Cannot connect to host "
                                   "127.0.0.1:9 ssl:default [Connection refused]")
    assert dvc_output_is_transient("ERROR: unexpected error - 503, message='Service Unavailable', url='http://x'")
    assert not dvc_output_is_transient("ERROR: unexpected error - [Errno 28] No space left on device")
    assert not dvc_output_is_transient("ERROR: failed to push data - [Errno 13] Permission denied: '/remote'")
    assert not dvc_output_is_transient("ERROR: failed to reproduce 'prepare': failed to run: sdm data prepare")
    assert not dvc_output_is_transient("ERROR: 403, message='Forbidden' (a timeout was not the cause)")


@pytest.mark.slow
def test_a_refused_remote_fails_as_a_transient_dvc_error(project: Path) -> None:
    """A remote nobody listens on: DVC fails by itself (no timeout), and its output marks it transient."""
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now: connections are refused
    _dvc(["remote", "add", "-f", "-d", "refused", f"http://127.0.0.1:{port}/store"], project)
    with pytest.raises(DataVersionError) as info:
        run_dvc(["push"], project, timeout_s=120, echo=False)
    assert not isinstance(info.value, DvcTimeoutError)
    assert info.value.transient and classify(info.value).retry, str(info.value)
    assert "`dvc push` failed (exit" in str(info.value)
