"""Best-effort calls to a tracking store: a background sender with bounded retries and a dropped count.

Training must not stop, or even slow down, because MLflow is unreachable: the
run's own record (the console, ``train_log.jsonl``) is complete without it.
So the driver hands each tracking call to a :class:`BestEffortSender`: one
background thread makes the calls in order, retries a failing one a bounded
number of times with a doubling wait, then drops it and counts it. The first
drop prints one warning (not one per call); a later success after drops says
the store is back. At the end :meth:`BestEffortSender.close` gives the calls
still queued a bounded time and reports what was sent and dropped.

Calls must be safe to repeat (a request may have reached the server before its
reply was lost): metrics carry the timestamp of the event, not of the try, so a
repeat writes the same point; tags and artifacts are overwritten.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_STOP = object()


@dataclass(frozen=True)
class BestEffortPolicy:
    """How hard to try. The defaults bound a dead store's cost to ~3 s per call, in the background."""

    attempts: int = 3  # tries per call
    backoff_s: float = 1.0  # wait before the second try, doubled before each further one
    drain_s: float = 30.0  # at close: the most time the calls still queued may take
    max_pending: int = 10_000  # calls queued beyond this (a long outage) are dropped at once

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.drain_s < 0 or self.max_pending < 1:
            raise ValueError(f"invalid best-effort policy {self}")


@dataclass
class SendReport:
    """What became of the calls: ``sent`` made it, ``dropped`` did not (by kind, e.g. ``metrics``)."""

    sent: int = 0
    dropped: int = 0
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def summary(self) -> dict[str, Any]:
        """A JSON-able record for the run log."""
        return {"sent": self.sent, "dropped": self.dropped, "dropped_by_kind": dict(self.dropped_by_kind),
                "first_error": self.first_error}


class BestEffortSender:
    """Makes calls in a background thread, in order; never raises into the caller.

    ``warn`` gets one line on the first drop and one when calls succeed again;
    ``name`` says what the store is in those lines (e.g. ``MLflow (http://host:5000)``).
    """

    def __init__(self, name: str, warn: Callable[[str], Any], policy: BestEffortPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or BestEffortPolicy()
        self._warn = warn
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped: Counter[str] = Counter()
        self._first_error = ""
        self._down = False
        self._deadline: float | None = None  # set by close(): retries stop waiting past it
        self._abandoned = False
        self._in_flight: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="sdm-best-effort")
        self._thread.start()

    def submit(self, kind: str, call: Callable[[], Any]) -> None:
        """Queue ``call`` (``kind`` labels it in the dropped count); returns at once."""
        with self._lock:
            if self._deadline is not None:
                self._drop(kind, "submitted after close")
                return
            if self._queue.qsize() >= self.policy.max_pending:
                self._drop(kind, f"more than {self.policy.max_pending} calls waiting")
                return
        self._queue.put((kind, call))

    def close(self) -> SendReport:
        """Give the queued calls up to ``policy.drain_s``, then count what is left as dropped."""
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.policy.drain_s
        self._queue.put(_STOP)
        self._thread.join(timeout=self.policy.drain_s + 1.0)
        with self._lock:
            if self._thread.is_alive():
                # Stuck in a call (a server that accepts and never answers): abandon the thread. What it
                # still holds is counted as dropped; a late success is possible but not confirmed.
                self._abandoned = True
                if self._in_flight is not None:
                    self._drop(self._in_flight, "no reply before the end of the run")
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        self._drop(item[0], "not sent before the end of the run")
            return self.report()

    def report(self) -> SendReport:
        """The counts so far."""
        return SendReport(self._sent, sum(self._dropped.values()), dict(self._dropped), self._first_error)

    # ---- the thread --------------------------------------------------------------------------------------

    def _drop(self, kind: str, why: str) -> None:
        """Count one dropped call (caller holds the lock) and warn on the first."""
        first = not self._dropped
        self._dropped[kind] += 1
        if not self._first_error:
            self._first_error = why
        if first:
            self._warn(f"warning: {self.name} unreachable, a {kind} call dropped ({why}); training goes on and "
                       f"the console and train_log.jsonl keep everything; calls that do not get through after "
                       f"{self.policy.attempts} tries are dropped and counted at the end")

    def _wait(self, seconds: float) -> bool:
        """Sleep before a retry; False when the close deadline leaves no time for it."""
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, deadline - time.monotonic())
            if seconds <= 0:
                return False
        time.sleep(seconds)
        return True

    def _send(self, kind: str, call: Callable[[], Any]) -> None:
        error = ""
        for attempt in range(self.policy.attempts):
            if attempt and not self._wait(self.policy.backoff_s * 2 ** (attempt - 1)):
                break
            try:
                call()
            except Exception as e:  # any failure of a tracking call is the store's problem, not the run's
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                continue
            with self._lock:
                if self._abandoned:
                    return  # close() already counted it as dropped
                self._sent += 1
                if self._down:
                    self._down = False
                    self._warn(f"{self.name}: reachable again ({sum(self._dropped.values())} call(s) dropped "
                               f"so far)")
            return
        with self._lock:
            if not self._abandoned:
                self._down = True
                self._drop(kind, error or "no time left to retry")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._abandoned:
                return
            kind, call = item
            with self._lock:
                self._in_flight = kind
            self._send(kind, call)
            with self._lock:
                self._in_flight = None
