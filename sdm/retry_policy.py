"""Which failures are worth a second try: network outages and timeouts, nothing else.

A retry only helps when the cause may be gone a few seconds later: a tracking
server restarting, a remote that timed out, a dropped connection. A full disk, a
permission error, bad input or a NaN loss fails the same way again (training is
deterministic), so retrying it only hides the clear error behind minutes of
waiting and, for registration, risks side effects. Every retried Prefect task
uses :func:`retry_condition` (``retry_condition_fn``); anything not recognised as
transient is **not** retried.

The exception is classified together with its causes (``__cause__``, else
``__context__``): an ``MlflowException`` raised while handling a refused
connection is a network error; an error caused by ENOSPC is a full disk. A
permanent cause anywhere in the chain wins over a transient one.

This module imports neither Prefect nor torch: it is plain exception inspection.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import subprocess
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sdm.errors import InputError

# OS errors a retry cannot fix: a full disk or quota, no permission, a read-only or missing path.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                              errno.ENOTDIR, errno.EISDIR, errno.EFBIG, errno.ENAMETOOLONG})
# OS errors of the network: the peer or the route may be back on the next try.
NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET,
                            errno.EHOSTDOWN, errno.EPIPE})

# Messages of wrapped network failures (MLflow's REST client flattens requests' errors into its message).
NETWORK_MESSAGE = re.compile(
    r"connection refused|connection reset|connection aborted|max retries exceeded|failed to establish a new "
    r"connection|temporary failure in name resolution|name or service not known|network is unreachable|"
    r"timed out|timeout|remote end closed connection|server disconnected|cannot connect to host|"
    r"failed with error code (429|5\d\d)|\b(502|503|504) (bad gateway|service unavailable|gateway time-?out)|"
    r"database is locked",
    re.IGNORECASE,
)
# MLflow error codes that mean "try again later".
MLFLOW_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                                    "SERVICE_UNDER_MAINTENANCE", "WORKSPACE_TEMPORARILY_UNAVAILABLE"})
# MLflow error codes that mean "the request is wrong": the same request fails again.
MLFLOW_PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                                    "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "BAD_REQUEST",
                                    "MALFORMED_REQUEST", "INVALID_STATE", "NOT_FOUND", "ENDPOINT_NOT_FOUND",
                                    "FEATURE_DISABLED", "QUOTA_EXCEEDED", "NOT_IMPLEMENTED"})
# The training loop's non-finite loss (sdm.train.loop.NonFiniteLossError), also as it reads in the text of a
# Ray worker failure that wraps it.
NON_FINITE = "NonFiniteLossError"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether to retry, and the one-line reason (logged by the retry condition)."""

    retry: bool
    reason: str


def causes(exc: BaseException, limit: int = 16) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it: ``__cause__``, else ``__context__`` unless suppressed (``from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < limit:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _class_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _permanent(exc: BaseException) -> str | None:
    """Why ``exc`` (one link of the chain) will fail again, or None."""
    if not isinstance(exc, Exception):
        return f"{type(exc).__name__} (an interrupt or exit, never retried)"
    if NON_FINITE in _class_names(exc) or NON_FINITE in str(exc):
        return "a non-finite loss (training is deterministic: it would diverge again)"
    if isinstance(exc, InputError):
        return f"bad input ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror or exc})"
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, AssertionError)):
        return f"{type(exc).__name__} (a bug or bad input, not an outage)"
    if getattr(exc, "transient", None) is False:  # sdm.data.version.DataVersionError: DVC's output says so
        return f"{type(exc).__name__}: not a network or timeout failure"
    code = getattr(exc, "error_code", None)
    if "MlflowException" in _class_names(exc) and code in MLFLOW_PERMANENT_CODES:
        return f"MLflow {code}"
    return None


def _http_status(exc: BaseException) -> int | None:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code
    response = getattr(exc, "response", None)  # requests.HTTPError
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _transient(exc: BaseException) -> str | None:
    """Why ``exc`` (one link of the chain) may succeed on a second try, or None."""
    if getattr(exc, "transient", None) is True:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
        return f"a timeout ({type(exc).__name__})"
    if isinstance(exc, ConnectionError):
        return f"a connection error ({type(exc).__name__})"
    if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN:
        return "a temporary DNS failure"
    if isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS:
        return f"a network error ({errno.errorcode.get(exc.errno, exc.errno)})"
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}" if status >= 500 or status == 429 else None
    names = _class_names(exc)
    # requests / urllib3 / aiohttp network failures (not builtin ConnectionError subclasses).
    if names & {"ConnectTimeout", "ReadTimeout", "NewConnectionError", "MaxRetryError", "ProtocolError",
                "ClientConnectorError", "ServerDisconnectedError"} or (
            "RequestException" in names and "ConnectionError" in names):
        return f"a network error ({type(exc).__name__})"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, OSError):
        return _transient(exc.reason)
    if "MlflowException" in names:
        code = getattr(exc, "error_code", None)
        if code in MLFLOW_TRANSIENT_CODES:
            return f"MLflow {code}"
        if NETWORK_MESSAGE.search(str(getattr(exc, "message", exc))):
            return f"MLflow could not reach its store: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def classify(exc: BaseException) -> Verdict:
    """Retry ``exc``? Only a timeout or a network failure (in it or its causes), and no permanent cause."""
    chain = list(causes(exc))
    for link in chain:
        reason = _permanent(link)
        if reason is not None:
            return Verdict(False, f"not retried: {reason}")
    for link in chain:
        reason = _transient(link)
        if reason is not None:
            return Verdict(True, f"retried: {reason}")
    return Verdict(False, f"not retried: {type(exc).__name__} is not a network or timeout error")


def is_transient(exc: BaseException) -> bool:
    """True when a second try may succeed (:func:`classify`)."""
    return classify(exc).retry


def failed_exception(state: Any) -> BaseException | None:
    """The exception a failed Prefect state holds (its ``data``, else its result), None when unreadable."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except BaseException:  # an unreadable result: no exception to judge
        return None
    return result if isinstance(result, BaseException) else None


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures (:func:`classify`); the verdict is logged.

    An unreadable failure is not retried: the policy retries what it recognises, nothing on a guess.
    """
    exc = failed_exception(state)
    verdict = Verdict(False, "not retried: the failure's exception could not be read") if exc is None \
        else classify(exc)
    (log.info if verdict.retry else log.warning)("%s: %s", getattr(task, "name", "task"), verdict.reason)
    return verdict.retry
