"""The DVC remote: which one the repo's config makes the default, whether it answers, and whether it takes a write.

The remote is read through DVC's own config and filesystem API (in this process, the same code ``dvc push``
runs), so every remote type DVC has a plugin for is checked the same way: the remote's root is read
(``exists``), then a probe object is written under ``<remote>/.sdm-probe/``, read back and deleted. A local
folder remote is checked without writing: the folder, or the folder it would be made in, is writable
(``dvc push`` creates it). Each probe runs on a worker thread and is abandoned after ``timeout_s``: a remote
that does not answer is reported in bounded time whatever the client library's own retries are.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sdm.services import DEFAULT_TIMEOUT_S, ServiceError

SERVICE = "DVC remote"
ADD_REMOTE = ("`dvc remote add -d storage s3://BUCKET/PATH` (an S3-compatible store also needs "
              "`dvc remote modify storage endpointurl URL`), or `dvc remote add -d storage /a/shared/folder`")
T = TypeVar("T")


def _bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` on a daemon thread; TimeoutError when it has not returned after ``timeout_s``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="sdm-dvc-probe")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _config_file(repo: Any, name: str) -> str:
    """Which config file defines remote ``name`` (the most local one wins, as in DVC)."""
    files = {"local": ".dvc/config.local", "repo": ".dvc/config", "global": "the global DVC config",
             "system": "the system DVC config"}
    for level in ("local", "repo", "global", "system"):
        try:
            if name in (repo.config.read(level).get("remote") or {}):
                return files[level]
        except Exception:  # noqa: BLE001 - an unreadable level is one that does not define it
            continue
    return "the DVC config"


def remote_setting(root: Path) -> tuple[str, str, str]:
    """(remote name, its URL, where it is configured) of the DVC repo at ``root``; ServiceError when none is set."""
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        raise ServiceError(SERVICE, f"{root} is not a DVC repository (no .dvc folder)",
                           "run sdm from the project's checkout, or `dvc init` there")
    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise ServiceError(SERVICE, f"no default remote in {root / '.dvc'} (core.remote is unset)", ADD_REMOTE)
        remote = (repo.config.get("remote") or {}).get(name)
        if remote is None:
            raise ServiceError(SERVICE, f"core.remote names {name!r}, which is not a configured remote",
                               f"`dvc remote default NAME` with one of `dvc remote list`, or {ADD_REMOTE}")
        url = str(remote.get("url", ""))
        endpoint = remote.get("endpointurl")
        shown = f"{url} (endpointurl {endpoint})" if endpoint else url
        return name, shown, f"remote {name!r} in {_config_file(repo, name)}"


def _fix_for(message: str, name: str) -> str:
    low = message.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low:
        return "create the bucket (`aws s3 mb s3://BUCKET`, or in the provider's console) or fix the remote's URL"
    if any(s in low for s in ("accessdenied", "access denied", "forbidden", "403", "invalidaccesskeyid",
                              "signaturedoesnotmatch", "credentials", "unable to locate credentials")):
        return (f"give this machine credentials with write access: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a "
                f"profile, or `dvc remote modify --local {name} access_key_id ...` (and secret_access_key)")
    if "no module named" in low or "pip install" in low or "install" in low and "plugin" in low:
        return "install the remote's plugin: `pip install -c constraints.txt 'sdm[s3]'` (dvc-s3) for S3"
    return (f"check the remote's URL and endpoint (`dvc remote list`; `dvc remote modify {name} endpointurl URL`), "
            f"that the service runs and this machine reaches it")


def _probe_local(path: Path, name: str, shown: str, source: str) -> str:
    p = path
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ServiceError(SERVICE, f"{shown} ({source}): {p} is not a writable folder",
                           f"`chmod u+w {p}`, or point the remote elsewhere (`dvc remote modify {name} url DIR`)")
    state = "exists, writable" if p == path else f"will be created by `dvc push` ({p} is writable)"
    return f"{shown} ({source}): local folder {state}"


def probe_dvc_remote(root: Path, timeout_s: float = DEFAULT_TIMEOUT_S, write: bool = True) -> str:
    """One line on the default DVC remote of the repo at ``root``, or a ServiceError with the setting and fix.

    ``write``: also put, read back and delete a probe object (remote types other than a local folder).
    Each filesystem step is bounded by ``timeout_s``.
    """
    name, shown, source = remote_setting(root)
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            remote = repo.cloud.get_remote(name)
            fs, path = remote.fs, remote.path
    except Exception as e:  # noqa: BLE001 - a missing plugin or a bad URL: DVC's message says which
        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ServiceError(SERVICE, f"{shown} ({source}): DVC cannot open it: {message}",
                           _fix_for(message, name)) from None
    if fs.protocol == "local":
        return _probe_local(Path(path), name, shown, source)
    step = "opening the storage client"
    try:
        # Building the client (loading botocore's service models: seconds on a busy machine) is local work,
        # not the remote's answer: it gets its own, looser bound.
        connect = getattr(fs.fs, "connect", None)  # s3fs: makes the client (no request yet)
        if callable(connect):
            _bounded(connect, max(30.0, 6 * timeout_s), step)
        step = "reading the remote's root"
        exists = _bounded(lambda: fs.exists(path), timeout_s, step)
        if not write:
            return f"{shown} ({source}): answers"
        probe = f"{path.rstrip('/')}/.sdm-probe/{uuid.uuid4().hex}"
        step = f"writing a probe object ({probe})"
        _bounded(lambda: fs.fs.pipe_file(probe, b"sdm probe\n"), timeout_s, step)
        step = "reading it back"
        back = _bounded(lambda: fs.fs.cat_file(probe), timeout_s, step)
        step = "deleting it"
        _bounded(lambda: fs.fs.rm_file(probe), timeout_s, step)
    except TimeoutError:
        raise ServiceError(SERVICE, f"{shown} ({source}): no answer within {timeout_s:g} s ({step})",
                           _fix_for("", name), transient=True) from None
    except Exception as e:  # noqa: BLE001 - the storage client's error names the cause (auth, bucket, network)
        from sdm.retry_policy import is_transient

        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ServiceError(SERVICE, f"{shown} ({source}): {step} failed: {message}", _fix_for(message, name),
                           transient=is_transient(e)) from None
    if back != b"sdm probe\n":
        raise ServiceError(SERVICE, f"{shown} ({source}): a probe object read back differs from what was written",
                           "check the storage service")
    return f"{shown} ({source}): answers; {'root exists, ' if exists else ''}a probe object was written, read " \
           f"back and deleted"
