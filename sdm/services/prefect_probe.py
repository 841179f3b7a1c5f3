"""The Prefect API: unset means the ephemeral API inside each flow run (no server); set, its ``/health`` answers."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from sdm.services import DEFAULT_TIMEOUT_S, ServiceError

SERVICE = "Prefect API"
ENV = "PREFECT_API_URL"


def prefect_setting() -> tuple[str | None, str]:
    """(``PREFECT_API_URL`` or None, where it came from): the environment, else the active Prefect profile."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return env, f"env {ENV}"
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH")
                    or Path(os.environ.get("PREFECT_HOME") or "~/.prefect") / "profiles.toml").expanduser()
    if not profiles.is_file() or ENV not in profiles.read_text(errors="replace"):
        return None, f"{ENV} unset"  # no profile sets it: skip importing Prefect (seconds)
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url), f"{ENV} in the Prefect profile (`prefect config view`)"
    return None, f"{ENV} unset"


def probe_prefect(timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """One line on the Prefect API this process would use, or a ServiceError naming the setting and the fix."""
    url, source = prefect_setting()
    if url is None:
        return (f"ephemeral API ({source}): each `sdm pipeline run` starts Prefect in its own process; "
                f"schedules (`sdm pipeline serve`) need a server")
    fix = (f"start the server (`prefect server start`) or point {ENV} at one that runs "
           f"(`unset {ENV}` for the ephemeral API)")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as r:
            body = r.read(100).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        raise ServiceError(SERVICE, f"{url} ({source}): /health answered HTTP {e.code}",
                           "check that the URL ends in /api (e.g. http://127.0.0.1:4200/api) and any auth "
                           "(PREFECT_API_KEY)") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServiceError(SERVICE, f"{url} ({source}) does not answer within {timeout_s:g} s: "
                           f"{getattr(e, 'reason', e)}", fix) from None
    if body != "true":
        raise ServiceError(SERVICE, f"{url} ({source}): /health answered {body[:60]!r}, not a Prefect API",
                           "check that the URL ends in /api (e.g. http://127.0.0.1:4200/api)")
    return f"{url} ({source}): /health answers"
