"""Retry only what may succeed on a second try: network/server hiccups, not bad input."""

from __future__ import annotations

from typing import Any

from sdm.config import ConfigError

# Bad input stays bad: retrying it only delays the clear error.
NOT_TRANSIENT: tuple[type[BaseException], ...] = (ConfigError, ValueError, FileNotFoundError, KeyError, TypeError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a bad-input error."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # an unreadable result: be conservative and retry
            return True
    return not isinstance(exc, NOT_TRANSIENT)
