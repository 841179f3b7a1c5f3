"""Write a directory all at once: build it in a temp sibling, then rename it into place.

Readers never see a half-written output, and a failure leaves the previous
output (if any) untouched. Used by checkpoints, prepared data, segmenters and
evaluation outputs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``final``, replacing an older ``final`` only at the end."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


@contextmanager
def atomic_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``directory``; on success it becomes ``directory``, on error it is removed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
