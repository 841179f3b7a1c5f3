"""The retry policy: only network errors and timeouts are retried; the failures are made for real.

ENOSPC comes from writing to /dev/full, EACCES from writing to /proc/1/environ
(refused even to root), EPERM from an immutable file (chattr +i, where the
filesystem allows it), connection errors from a closed loopback port, timeouts
from a loopback server that never answers, HTTP 5xx from a loopback server
answering 503 to MLflow's REST client. Attempts are counted through real
Prefect task retries.
"""

from __future__ import annotations

import errno
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.tasks import transient_only
from sdm.config import ConfigError
from sdm.data.version import DataVersionError, DvcTimeoutError
from sdm.errors import InputError
from sdm.retry_policy import classify, is_transient


def _raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the point is to catch what it raises
        return e
    raise AssertionError("expected a failure")


def _write_dev_full() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        os.write(fd, b"checkpoint bytes")
    finally:
        os.close(fd)


def _write_proc_environ() -> None:
    fd = os.open("/proc/1/environ", os.O_WRONLY)
    os.close(fd)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _connect_refused() -> None:
    socket.create_connection(("127.0.0.1", _free_port()), timeout=5).close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def unavailable_url() -> Iterator[str]:
    """A loopback HTTP server answering every request with 503 Service Unavailable."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _unavailable(self) -> None:
            self.send_response(503)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"down for maintenance")

        do_GET = do_POST = _unavailable  # noqa: N815 - http.server's names

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_full_disk_and_permission_errors_are_never_retried(tmp_path: Path) -> None:
    enospc = _raised(_write_dev_full)
    assert isinstance(enospc, OSError) and enospc.errno == errno.ENOSPC
    assert not is_transient(enospc) and "ENOSPC" in classify(enospc).reason
    eacces = _raised(_write_proc_environ)
    assert isinstance(eacces, OSError) and eacces.errno == errno.EACCES
    assert not is_transient(eacces)
    # Wrapped (an MLflow or DVC step failing because the disk is full): the permanent cause wins.
    try:
        try:
            _write_dev_full()
        except OSError as e:
            raise RuntimeError("could not write the artifact") from e
    except RuntimeError as wrapped:
        assert not is_transient(wrapped)


def test_an_immutable_file_eperm_is_not_retried(tmp_path: Path) -> None:
    target = tmp_path / "locked"
    target.write_text("x")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(target)]).returncode != 0:
        pytest.skip("chattr +i not allowed here (needs CAP_LINUX_IMMUTABLE)")
    try:
        eperm = _raised(lambda: target.open("a").close())
        assert isinstance(eperm, OSError) and eperm.errno == errno.EPERM
        assert not is_transient(eperm)
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def test_network_errors_and_timeouts_are_retried(silent_port: int) -> None:
    refused = _raised(_connect_refused)
    assert isinstance(refused, ConnectionRefusedError) and is_transient(refused)

    def read_silent() -> None:
        with socket.create_connection(("127.0.0.1", silent_port), timeout=0.3) as s:
            s.recv(1)

    timeout = _raised(read_silent)
    assert isinstance(timeout, TimeoutError) and is_transient(timeout)
    assert is_transient(DvcTimeoutError("`dvc push` did not finish within 2 s"))
    assert is_transient(DataVersionError("`dvc push` failed: Connection refused", transient=True))
    assert not is_transient(DataVersionError("`dvc repro prepare` failed (exit 1)"))


def test_mlflow_unreachable_or_unavailable_is_retried_bad_requests_are_not(
        unavailable_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow's own HTTP retries would take minutes: one try each, short timeouts.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    refused = _raised(lambda: mlflow.MlflowClient(f"http://127.0.0.1:{_free_port()}").search_experiments())
    assert isinstance(refused, MlflowException) and is_transient(refused), classify(refused)
    unavailable = _raised(lambda: mlflow.MlflowClient(unavailable_url).search_experiments())
    assert isinstance(unavailable, MlflowException) and is_transient(unavailable), (unavailable, classify(unavailable))
    missing = MlflowException("Registered Model with name=x not found", error_code="RESOURCE_DOES_NOT_EXIST")
    assert not is_transient(missing)


def test_bad_input_nan_loss_and_interrupts_are_never_retried() -> None:
    from sdm.train.loop import NonFiniteLossError

    assert not is_transient(ConfigError("unknown key 'model.num_clases'"))
    assert not is_transient(InputError("labels/a.png: value 9 >= num_classes 5"))
    assert not is_transient(ValueError("no metrics in metrics.json"))
    assert not is_transient(NonFiniteLossError("pretrain step 12: gradient norm is nan"))
    # As the Ray driver reports a worker's NaN (sdm.train.ray_run.TrainingFailed carries the worker's text).
    assert not is_transient(RuntimeError("training failed after 2 restart(s): NonFiniteLossError: pretrain step 3"))
    assert not is_transient(KeyboardInterrupt())
    # A network error raised while handling bad input is still bad input's failure... unless it is the cause:
    try:
        try:
            raise ConnectionError("store down")
        except ConnectionError as e:
            raise InputError("metrics.json: no figures") from e
    except InputError as wrapped:
        assert not is_transient(wrapped)
    # Unknown failures are not retried on a guess.
    assert not is_transient(RuntimeError("something else"))


@pytest.mark.slow
def test_prefect_retries_only_transient_failures(prefect_harness: None, silent_port: int) -> None:
    """A real Prefect task with retries=3 and the policy: attempts counted per failure kind."""
    from prefect import task

    from sdm.train.loop import NonFiniteLossError

    def nan_loss() -> None:
        raise NonFiniteLossError("pretrain step 7: gradient norm is nan (loss nan)")

    def read_silent() -> None:
        with socket.create_connection(("127.0.0.1", silent_port), timeout=0.2) as s:
            s.recv(1)

    failures: dict[str, tuple[Callable[[], None], int]] = {
        "ENOSPC": (_write_dev_full, 1),
        "EACCES": (_write_proc_environ, 1),
        "NaN loss": (nan_loss, 1),
        "bad input": (lambda: (_ for _ in ()).throw(InputError("bad metrics.json")), 1),
        "connection refused": (_connect_refused, 4),
        "timeout": (read_silent, 4),
    }
    for what, (fail, expected) in failures.items():
        attempts = {"n": 0}

        def step(fail: Callable[[], None] = fail, attempts: dict[str, int] = attempts) -> None:
            attempts["n"] += 1
            fail()

        flaky = task(step, name=f"step-{what}", retries=3, retry_delay_seconds=0, retry_condition_fn=transient_only)
        with pytest.raises(BaseException):  # noqa: B017, PT011 - each kind raises its own
            flaky()
        assert attempts["n"] == expected, f"{what}: {attempts['n']} attempt(s), expected {expected}"


@pytest.mark.slow
def test_the_flow_does_not_retry_bad_input(prefect_harness: None, tmp_path: Path) -> None:
    """The retrain flow has no flow-level retry (Prefect's flows cannot filter what they retry)."""
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.retrain import retrain

    assert not retrain.retries
    # A project folder of its own (the pipeline lock lives beside params.yaml).
    state = retrain(overrides=["data.image_size=[64,64]"], params_file=str(tmp_path / "params.yaml"),
                    return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ConfigError)

    async def run_count() -> int:
        async with get_client() as client:
            return (await client.read_flow_run(state.state_details.flow_run_id)).run_count

    assert asyncio.run(run_count()) == 1
