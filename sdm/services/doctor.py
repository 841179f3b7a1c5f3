"""``sdm doctor``: every service the resolved config points at, one line each: what, from where, OK or FAIL, the fix.

Services, in the order a run meets them: the DVC remote (``sdm data version`` pushes to it), the Ray cluster
(``RAY_ADDRESS``; unset: each run starts a local one), the MLflow tracking store, the Prefect API. Each check
is one probe of :mod:`sdm.services` bounded by ``timeout_s``; the doctor never starts, changes or stops a
service (the probes write one small object / run to check write access and delete it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdm.services import DEFAULT_TIMEOUT_S, NotChecked, ServiceError

if TYPE_CHECKING:
    from sdm.config import Config

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"


@dataclass(frozen=True)
class Finding:
    """The doctor's verdict on one service: ``status`` OK / FAIL / SKIP, ``detail`` what it points at and what
    answered (or the problem), ``fix`` for a FAIL."""

    service: str
    status: str
    detail: str
    fix: str = ""


def _ray(timeout_s: float) -> str:
    from sdm.train.ray_address import probe_ray_address, ray_address

    address = ray_address()
    if not address or address == "local":
        return f"local cluster (RAY_ADDRESS {'unset' if not address else '=local'}): each run starts its own"
    return probe_ray_address(address, timeout_s=timeout_s)


def _checks(config: Config, root: Path, timeout_s: float) -> list[tuple[str, Callable[[], str]]]:
    from sdm.services.dvc_probe import probe_dvc_remote
    from sdm.services.prefect_probe import probe_prefect
    from sdm.services.tracking_probe import probe_tracking

    return [
        ("DVC remote", lambda: probe_dvc_remote(root, timeout_s)),
        ("Ray cluster", lambda: _ray(timeout_s)),
        ("MLflow tracking", lambda: probe_tracking(config, timeout_s)),
        ("Prefect API", lambda: probe_prefect(timeout_s)),
    ]


def diagnose(config: Config, root: Path, timeout_s: float = DEFAULT_TIMEOUT_S,
             only: list[str] | None = None) -> list[Finding]:
    """Check every service (or those whose names start with one of ``only``, case-insensitive)."""
    from sdm.train.ray_address import RayAddressError

    findings = []
    for name, check in _checks(config, root, timeout_s):
        if only and not any(name.lower().startswith(o.lower()) for o in only):
            continue
        try:
            findings.append(Finding(name, OK, check()))
        except ServiceError as e:
            findings.append(Finding(name, FAIL, e.problem, e.fix))
        except RayAddressError as e:  # its message names RAY_ADDRESS, the problem and the fix in one
            findings.append(Finding(name, FAIL, str(e)))
        except NotChecked as e:
            findings.append(Finding(name, SKIP, str(e)))
    return findings


def report_lines(findings: list[Finding]) -> list[str]:
    """``<service>  OK|FAIL|SKIP  <detail>`` per service, and ``    fix: ...`` under each FAIL that has one."""
    width = max((len(f.service) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.service:<{width}}  {f.status:<4}  {f.detail}")
        if f.status == FAIL and f.fix:
            lines.append(f"{'':<{width}}  fix:  {f.fix}")
    return lines
