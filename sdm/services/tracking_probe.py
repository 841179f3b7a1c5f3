"""The MLflow tracking store: which one the config points at, whether it answers, and whether it can be written.

- a tracking server (``http(s)://``): ``/health`` answers within the time limit; with ``write``, an experiment
  (``sdm-doctor``) can be created or read, a run in it gets an artifact through the server and lists it back,
  and the run is deleted again. A server that hands clients a path on its own disk as the artifact location
  (started without ``--serve-artifacts``) fails: the client would write to its own disk, not the server's;
- a sqlite file: the database (or the folder it would be made in) and the artifact folder are writable;
  nothing is created;
- a database store (``postgresql://``, ``mysql://``, ...): its host and port accept a connection.
"""

from __future__ import annotations

import math
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from sdm.services import DEFAULT_TIMEOUT_S, NotChecked, ServiceError
from sdm.tracking import ENV_URI, artifacts_dir, bounded_http, tracking_uri

if TYPE_CHECKING:
    from sdm.config import Config

SERVICE = "MLflow tracking"
PROBE_EXPERIMENT = "sdm-doctor"
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def tracking_setting(config: Config | None) -> tuple[str, str]:
    """(the tracking URI, where it came from): ``MLFLOW_TRACKING_URI``, else ``register.tracking_uri``, else the
    sqlite default (the rule of :func:`sdm.tracking.tracking_uri`)."""
    uri = tracking_uri(config)
    if os.environ.get(ENV_URI, "").strip():
        return uri, f"env {ENV_URI}"
    if config is not None and config.register.tracking_uri.strip():
        return uri, "register.tracking_uri (params.yaml / --set)"
    return uri, "default: sdm's sqlite store"


def _point_elsewhere(source: str) -> str:
    if source.startswith("env"):
        return f"set {ENV_URI} to a tracking server that runs (or unset it for sdm's sqlite store)"
    if source.startswith("register"):
        return "set register.tracking_uri to a tracking server that runs (or '' for sdm's sqlite store)"
    return "point MLFLOW_TRACKING_URI at a writable store"


def _writable_folder(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` when this user may create files there, else None."""
    p = path
    while not p.exists():
        if p.parent == p:
            return None
        p = p.parent
    return p if p.is_dir() and os.access(p, os.W_OK | os.X_OK) else None


def _probe_sqlite(uri: str, source: str) -> str:
    db = Path(uri[len("sqlite:///"):]).expanduser()
    setting = f"{uri} ({source})"
    if db.exists():
        if not os.access(db, os.R_OK | os.W_OK):
            raise ServiceError(SERVICE, f"{setting}: the database {db} is not writable by this user",
                               f"`chmod u+rw {db}`, or {_point_elsewhere(source)}")
        if not os.access(db.parent, os.W_OK | os.X_OK):  # sqlite writes its journal beside the file
            raise ServiceError(SERVICE, f"{setting}: the folder {db.parent} is not writable (sqlite writes its "
                               f"journal beside the database)", f"`chmod u+w {db.parent}`")
        state = f"database {db} writable"
    else:
        if _writable_folder(db.parent) is None:
            raise ServiceError(SERVICE, f"{setting}: the database {db} does not exist and its folder cannot be "
                               f"created here (not writable)", _point_elsewhere(source))
        state = f"database {db} will be created (folder writable)"
    folder = artifacts_dir(uri)
    if folder is not None and _writable_folder(folder) is None:
        raise ServiceError(SERVICE, f"{setting}: the artifact folder {folder} is not writable",
                           f"`chmod u+w {folder}`, or set SDM_MLFLOW_ARTIFACTS to a writable folder")
    return f"{uri} (sqlite, {source}): {state}; artifacts in {folder}"


def _answers(uri: str, timeout_s: float) -> str:
    """Raise unless the server at ``uri`` answers an HTTP request within ``timeout_s``; returns what it said."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            return f"/health answered {r.status}"
    except urllib.error.HTTPError as e:  # it answered: auth or a proxy in front; the write check tells more
        return f"/health answered {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"{reason}") from None


def check_server_answers(uri: str, source: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """A tracking server's ``/health`` answers within ``timeout_s``; else a ServiceError naming URI and setting."""
    try:
        return _answers(uri, timeout_s)
    except ConnectionError as e:
        raise ServiceError(SERVICE, f"{uri} ({source}) does not answer within {timeout_s:g} s: {e}",
                           f"start the server (`mlflow server --host HOST --port PORT --backend-store-uri ... "
                           f"--artifacts-destination ...`) or {_point_elsewhere(source)}; `sdm train --no-mlflow` "
                           f"trains without tracking", transient=True) from None


def _auth_fix(message: str) -> str | None:
    if any(s in message for s in ("401", "403", "Unauthorized", "Forbidden", "PERMISSION_DENIED",
                                  "UNAUTHENTICATED")):
        return "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for this server"
    return None


def _probe_server_write(uri: str, source: str, timeout_s: float) -> str:
    """Create/read the probe experiment, log and list an artifact through the server, delete the probe run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    step = "reading experiments"
    run_id = None
    try:
        with bounded_http(max_retries=0, timeout_s=max(1, math.ceil(timeout_s))):
            existing = client.get_experiment_by_name(PROBE_EXPERIMENT)
            step = f"creating experiment {PROBE_EXPERIMENT!r}"
            exp_id = existing.experiment_id if existing else client.create_experiment(PROBE_EXPERIMENT)
            step = "creating a run"
            run = client.create_run(exp_id, run_name="sdm-doctor-probe")
            run_id = run.info.run_id
            artifact_uri = run.info.artifact_uri or ""
            scheme = urllib.parse.urlparse(artifact_uri).scheme
            if scheme in ("", "file"):
                raise ServiceError(SERVICE, f"{uri} ({source}) gives runs the artifact location {artifact_uri!r}, a "
                                   f"path on the server's disk: clients would write to their own disk",
                                   "start the server with `--serve-artifacts --artifacts-destination DIR_OR_S3_URI` "
                                   "(artifacts then go through it as mlflow-artifacts:/ URIs)")
            step = f"writing an artifact to {artifact_uri}"
            client.log_text(run_id, "sdm doctor probe\n", "sdm-doctor.txt")
            step = f"listing the artifacts of {artifact_uri}"
            names = [f.path for f in client.list_artifacts(run_id)]
            if "sdm-doctor.txt" not in names:
                raise ServiceError(SERVICE, f"{uri} ({source}): an artifact written to {artifact_uri} is not "
                                   f"listed back ({names})", "check the server's --artifacts-destination")
            step = "deleting the probe run"
            client.delete_run(run_id)
            run_id = None
    except MlflowException as e:
        message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ServiceError(SERVICE, f"{uri} ({source}): {step} failed: {message}",
                           _auth_fix(str(e)) or "see the server's log; check its --backend-store-uri and "
                           "--artifacts-destination are writable by the server") from None
    except OSError as e:  # the artifact upload's own HTTP error paths
        raise ServiceError(SERVICE, f"{uri} ({source}): {step} failed: {type(e).__name__}: {e}",
                           "see the server's log") from None
    finally:
        if run_id is not None:  # a failure after the run was made: do not leave it behind (best effort)
            try:
                with bounded_http(max_retries=0, timeout_s=max(1, math.ceil(timeout_s))):
                    client.delete_run(run_id)
            except Exception:  # noqa: BLE001 - the failure above is the one to report
                pass
    return (f"experiment {PROBE_EXPERIMENT!r} writable; an artifact went through the server "
            f"({artifact_uri.split('/')[0]}/...) and was listed back")


def _probe_database(uri: str, source: str, timeout_s: float) -> str:
    parsed = urllib.parse.urlparse(uri)
    dialect = parsed.scheme.split("+")[0]
    host, port = parsed.hostname or "localhost", parsed.port or _DB_PORTS.get(dialect)
    if port is None:
        raise ServiceError(SERVICE, f"{uri} ({source}): no port in the URI and no default for {dialect!r}",
                           "write the port into the URI (…://user@host:PORT/db)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ServiceError(SERVICE, f"{uri.replace(parsed.password or chr(0), '***')} ({source}): {host}:{port} "
                           f"does not answer within {timeout_s:g} s: {e}",
                           f"start the database or {_point_elsewhere(source)}") from None
    return f"{dialect} at {host}:{port} accepts connections (write access not checked: a database store)"


def probe_tracking(config: Config | None, timeout_s: float = DEFAULT_TIMEOUT_S, write: bool = True) -> str:
    """One line on the tracking store the config points at, or a ServiceError naming the setting and the fix.

    ``write`` (``sdm doctor``): on a server, also create/read an experiment and round-trip an artifact;
    without it (training's preflight) only whether the server answers. Each request waits at most
    ``timeout_s``; a server that does not answer fails in about ``timeout_s``.
    """
    uri, source = tracking_setting(config)
    scheme = urllib.parse.urlparse(uri).scheme
    if uri.startswith("sqlite:///"):
        return _probe_sqlite(uri, source)
    if scheme in ("http", "https"):
        said = check_server_answers(uri, source, timeout_s)
        if not write:
            return f"{uri} ({source}): {said}"
        return f"{uri} ({source}): {said}; {_probe_server_write(uri, source, timeout_s)}"
    if scheme.split("+")[0] in _DB_PORTS:
        return _probe_database(uri, source, timeout_s)
    if scheme in ("", "file"):
        raise ServiceError(SERVICE, f"{uri} ({source}): MLflow 3 refuses a file store",
                           f"use sqlite:///{Path(uri.removeprefix('file://')).resolve()}/mlflow.db or a tracking "
                           f"server")
    raise NotChecked(f"{uri} ({source}): a {scheme!r} store; sdm checks http(s) servers, sqlite files and "
                     f"database URIs only")
