"""``sdm doctor`` and the service probes it shares with the checks before work (issue 17, item 5 and bad input).

Fast tests use real sockets on loopback: a port nobody listens on (refused), a socket that accepts and never
answers (silent), a tiny HTTP server; a folder that cannot be made (a file in the way: the tests may run as
root, for whom chmod changes nothing). The slow one checks a real MLflow tracking server.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _servers import ServerProcess, free_port
from typer.testing import CliRunner

from sdm.cli import app
from sdm.config import resolve
from sdm.services import ServiceError
from sdm.services.doctor import FAIL, OK, diagnose, report_lines
from sdm.services.dvc_probe import probe_dvc_remote
from sdm.services.prefect_probe import probe_prefect
from sdm.services.tracking_probe import probe_tracking


@pytest.fixture(autouse=True)
def _no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL", "SDM_MLFLOW_ARTIFACTS"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never sends a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


class _Health(http.server.BaseHTTPRequestHandler):
    body = b"true"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path.endswith("/health") else 404)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def dvc_repo(root: Path, remote_url: str | None) -> Path:
    """A DVC repo without git (core.no_scm), written directly: no `dvc init` subprocess."""
    (root / ".dvc").mkdir(parents=True)
    config = "[core]\n    no_scm = True\n"
    if remote_url is not None:
        config += f"    remote = store\n['remote \"store\"']\n    url = {remote_url}\n"
    (root / ".dvc" / "config").write_text(config)
    return root


def cfg(*overrides: str):
    return resolve(params=None, overrides=list(overrides))


# --- MLflow tracking ----------------------------------------------------------------------------------------------


def test_tracking_refused_port_names_the_env_setting_and_the_fix(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ServiceError) as e:
        probe_tracking(cfg(), timeout_s=2)
    msg = str(e.value)
    assert uri in msg and "env MLFLOW_TRACKING_URI" in msg and "does not answer" in msg
    assert "mlflow server" in e.value.fix and "--no-mlflow" in e.value.fix and e.value.transient


def test_tracking_silent_server_fails_within_the_timeout(silent_port):
    uri = f"http://127.0.0.1:{silent_port}"
    start = time.monotonic()
    with pytest.raises(ServiceError) as e:
        probe_tracking(cfg(f"register.tracking_uri={uri}"), timeout_s=1)
    assert time.monotonic() - start < 5
    assert "register.tracking_uri" in str(e.value) and "within 1 s" in str(e.value)


def test_tracking_sqlite_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'store' / 'mlflow.db'}"
    with pytest.raises(ServiceError) as e:
        probe_tracking(cfg(f"register.tracking_uri={uri}"))
    assert "cannot be created" in str(e.value) and "register.tracking_uri" in e.value.fix


def test_tracking_sqlite_default_creates_nothing(tmp_path, monkeypatch):
    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    said = probe_tracking(cfg())
    assert "will be created (folder writable)" in said and not (tmp_path / "store").exists()


# --- DVC remote ---------------------------------------------------------------------------------------------------


def test_dvc_unset_remote_says_how_to_add_one(tmp_path):
    with pytest.raises(ServiceError) as e:
        probe_dvc_remote(dvc_repo(tmp_path, None))
    assert "no default remote" in str(e.value) and "dvc remote add -d" in e.value.fix


def test_dvc_not_a_repo(tmp_path):
    with pytest.raises(ServiceError) as e:
        probe_dvc_remote(tmp_path)
    assert "not a DVC repository" in str(e.value)


def test_dvc_local_remote_ok_and_blocked(tmp_path):
    said = probe_dvc_remote(dvc_repo(tmp_path / "ok", str(tmp_path / "remote")))
    assert "will be created by `dvc push`" in said and "remote 'store' in .dvc/config" in said
    assert not (tmp_path / "remote").exists()  # checked, not made
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(ServiceError) as e:
        probe_dvc_remote(dvc_repo(tmp_path / "bad", str(tmp_path / "a-file" / "remote")))
    assert "not a writable folder" in str(e.value)


def test_dvc_silent_http_remote_fails_within_the_timeout(tmp_path, silent_port):
    root = dvc_repo(tmp_path, f"http://127.0.0.1:{silent_port}/store")
    start = time.monotonic()
    with pytest.raises(ServiceError) as e:
        probe_dvc_remote(root, timeout_s=1)
    assert time.monotonic() - start < 40  # the client's set-up has its own bound; the answer gets 1 s
    assert "no answer within 1 s" in str(e.value) and e.value.transient


# --- Prefect API --------------------------------------------------------------------------------------------------


def test_prefect_unset_is_the_ephemeral_api():
    assert "ephemeral API" in probe_prefect()


def test_prefect_health_answers_or_not(monkeypatch, health_server):
    monkeypatch.setenv("PREFECT_API_URL", health_server + "/api")
    assert "/health answers" in probe_prefect(timeout_s=2)
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(ServiceError) as e:
        probe_prefect(timeout_s=2)
    assert "env PREFECT_API_URL" in str(e.value) and "prefect server start" in e.value.fix


# --- the command --------------------------------------------------------------------------------------------------


def test_doctor_all_ok_exits_0_and_one_failure_exits_1(tmp_path, monkeypatch):
    root = dvc_repo(tmp_path / "proj", str(tmp_path / "remote"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runner = CliRunner()
    ok = runner.invoke(app, ["doctor", "--params", str(tmp_path / "none.yaml")])
    assert ok.exit_code == 0, ok.output
    lines = ok.output.splitlines()
    assert [line.split()[0] for line in lines] == ["DVC", "Ray", "MLflow", "Prefect"]
    assert all(f"  {OK}  " in line for line in lines)
    assert "RAY_ADDRESS unset" in ok.output and "env MLFLOW_TRACKING_URI" in ok.output

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    bad = runner.invoke(app, ["doctor", "--params", str(tmp_path / "none.yaml"), "--timeout", "2",
                              "--set", f"register.tracking_uri=http://127.0.0.1:{free_port()}"])
    assert bad.exit_code == 1, bad.output
    ray_line = next(line for line in bad.output.splitlines() if line.startswith("Ray"))
    assert FAIL in ray_line and "RAY_ADDRESS" in ray_line
    # The env wins over --set, and the line says where the URI came from.
    assert "env MLFLOW_TRACKING_URI" in bad.output
    only = runner.invoke(app, ["doctor", "--params", str(tmp_path / "none.yaml"), "--only", "prefect"])
    assert only.exit_code == 0 and only.output.startswith("Prefect API")
    typo = runner.invoke(app, ["doctor", "--only", "mlfow"])
    assert typo.exit_code == 2 and "not a service" in typo.output


def test_report_lines_put_the_fix_under_the_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    findings = diagnose(cfg(), dvc_repo(tmp_path, None), timeout_s=2, only=["MLflow tracking", "DVC remote"])
    lines = report_lines(findings)
    assert [f.status for f in findings] == [FAIL, FAIL]
    assert lines[1].strip().startswith("fix:  `dvc remote add -d") and lines[3].strip().startswith("fix:  start")


# --- against a real tracking server -------------------------------------------------------------------------------


@pytest.mark.slow
def test_doctor_against_a_tracking_server(live_mlflow: ServerProcess):
    import mlflow

    said = probe_tracking(cfg(), timeout_s=10)
    assert live_mlflow.url in said and "an artifact went through the server (mlflow-artifacts:/...)" in said
    client = mlflow.MlflowClient(live_mlflow.url)
    exp = client.get_experiment_by_name("sdm-doctor")
    assert exp is not None
    # The probe run is deleted again.
    assert client.search_runs([exp.experiment_id]) == []
