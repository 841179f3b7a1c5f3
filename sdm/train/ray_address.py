"""``RAY_ADDRESS``: which cluster it names, and whether anything answers there, in a bounded time.

``ray.init(address=...)`` retries a silent address for a long time and then
fails with a bare ``ConnectionError``; a TCP connect to the GCS (or Ray Client)
port first turns that into one clear error in seconds, before a run folder or
an MLflow run exists. Nothing here imports Ray, so ``sdm doctor`` can use it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sdm.errors import InputError

DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


class RayAddressError(InputError):
    """``RAY_ADDRESS`` names a cluster that is not there (or cannot be understood)."""


def ray_address() -> str:
    """The ``RAY_ADDRESS`` of this process, stripped; "" when unset (a local cluster)."""
    return os.environ.get("RAY_ADDRESS", "").strip()


def _pointer_file() -> Path:
    """Where ``ray start`` records the last cluster it started (Ray's own rule: ``$RAY_TMPDIR``, ``$TMPDIR``,
    else /tmp, then ``ray/ray_current_cluster``)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def split_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` / ``"ray://HOST:PORT"`` / ``"auto"`` -> (host, port); a RayAddressError when it is none
    of those (``"local"`` means no cluster at all and is the caller's business)."""
    text = address.strip()
    if text == "auto":
        pointer = _pointer_file()
        if not pointer.is_file():
            raise RayAddressError(f"RAY_ADDRESS=auto: no Ray cluster was started on this machine ({pointer} does "
                                  f"not exist): start one with `ray start --head`, or set RAY_ADDRESS=HOST:PORT")
        text = pointer.read_text().strip()
    default_port = DEFAULT_GCS_PORT
    if text.startswith("ray://"):
        text, default_port = text[len("ray://"):], DEFAULT_CLIENT_PORT
    elif "://" in text:
        raise RayAddressError(f"RAY_ADDRESS={address}: not a Ray address; use HOST:PORT (the head's GCS port, "
                              f"6379 by default), ray://HOST:10001 (Ray Client) or auto")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"RAY_ADDRESS={address}: expected HOST:PORT (e.g. 10.0.0.5:6379), "
                              f"ray://HOST:PORT or auto")
    return host, int(port)


def probe_ray_address(address: str, timeout_s: float = 5.0) -> str:
    """Does something accept connections at ``address`` (a ``RAY_ADDRESS`` value)? A one-line description when
    it does; a RayAddressError naming RAY_ADDRESS, the problem and the fix, within about ``timeout_s``, when not.

    Only the port is checked (a TCP connect): whether it is a Ray cluster this client may use (version, token
    auth) shows when ``ray.init`` connects."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror as e:
        raise RayAddressError(f"RAY_ADDRESS={address}: unknown host {host!r} ({e.strerror}); fix the address or "
                              f"unset RAY_ADDRESS to train on a local Ray cluster") from None
    except TimeoutError:
        raise RayAddressError(f"RAY_ADDRESS={address}: {host}:{port} did not answer within {timeout_s:g} s (a "
                              f"firewall, or the wrong host); check that the head runs (`ray status` on it) and "
                              f"the port is open, or unset RAY_ADDRESS to train on a local Ray cluster") from None
    except OSError as e:
        raise RayAddressError(f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({e.strerror or e}); "
                              f"start the head (`ray start --head --port={port}`) or fix the address, or unset "
                              f"RAY_ADDRESS to train on a local Ray cluster") from None
    return f"{host}:{port} answers (RAY_ADDRESS={address})"
