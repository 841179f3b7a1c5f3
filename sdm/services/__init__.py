"""The services the pipeline talks to, checked in a bounded time: what each setting points at, and does it work.

One probe per service (``tracking_probe``, ``dvc_probe``, ``prefect_probe``;
the Ray address probe is ``sdm.train.ray_address``), used both by ``sdm doctor``
(``sdm.services.doctor``: every service, one line each) and by the checks that
run before work starts (training's preflight, ``sdm data version`` before its
push). A probe returns a one-line description of what answered, or raises
:class:`ServiceError`, whose message names the service, the setting and where
it came from, the problem, and the fix.
"""

from __future__ import annotations

from sdm.errors import InputError

# How long one probe may take by default (seconds); `sdm doctor --timeout` and the preflight callers change it.
DEFAULT_TIMEOUT_S = 5.0


class ServiceError(InputError):
    """A service a setting points at cannot be used: not reachable, no write access, not configured.

    ``service`` names it ("MLflow tracking", "DVC remote", ...), ``fix`` is the command or setting that
    repairs it (also the end of the message). An InputError: the CLI prints it as one line, exit code 2.
    ``transient``: the service did not answer (a caller that retries outages may retry it).
    """

    def __init__(self, service: str, problem: str, fix: str, transient: bool = False) -> None:
        super().__init__(f"{service}: {problem}; fix: {fix}")
        self.service, self.problem, self.fix = service, problem, fix
        self.transient = transient  # no answer (an outage may pass), not a wrong or missing setting



class NotChecked(Exception):  # noqa: N818 - a state, not a failure
    """A probe that cannot check this kind of service; the message says what it is and why (reported as SKIP)."""
