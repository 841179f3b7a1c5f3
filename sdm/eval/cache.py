"""Where evaluation caches live: trained segmenters and real-image statistics.

Both are keyed by the content hash of the prepared data (``data_key``: the
data version without its git commit), so they are reused for as long as the
data is unchanged, across code commits, and never mixed across data versions.
Root: ``SDM_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdm``, else ``~/.cache/sdm``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

ENV_CACHE = "SDM_CACHE_DIR"


def cache_root() -> Path:
    """The root folder of sdm's caches (``SDM_CACHE_DIR``, else the XDG cache home)."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sdm"


def short_hash(obj: Any, n: int = 12) -> str:
    """A stable short hash of a JSON-serialisable value (cache keys for settings and id lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def safe_name(text: str) -> str:
    """A data version or split name usable as one path component."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "_"


def data_key(prepared_dir: str | Path) -> tuple[str, str]:
    """(cache key, full data version) of a prepared dataset.

    The key is the content hash alone: the full version also names the git
    commit, which changes with every code commit while the data does not.
    """
    from sdm.data.version import data_version_info

    info = data_version_info(prepared_dir)
    return f"{info['hash_source']}-{info['hash'][:16]}", info["version"]
