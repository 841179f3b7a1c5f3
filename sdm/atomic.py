"""Write a folder all at once: build it in a temp sibling, then swap it into place.

Guarantee: the target always holds either the old or the new complete folder.

- On Linux the swap is ``renameat2(RENAME_EXCHANGE)`` (via libc): the new and
  the old folder trade places in one step; then the old one (now under the
  temp name) is removed.
- Elsewhere (no ``renameat2``, or a filesystem that refuses it) the old folder
  is renamed aside to ``.<name>.old-<owner>``, the new one renamed in, the old
  one removed. A crash between the two renames leaves no target: the next
  write of that target (or :func:`recover`) renames the old folder back.

Temp and aside names carry their writer (``<host>-<pid>-<token>``), so
leftovers of a crashed writer are cleaned by the next one while a live
writer's folders are never touched. Folders are created with the user's
umask (``mkdir``), not ``mkdtemp``'s 0700.

``atomic_dir(directory, kind=...)`` also guards the target (see
``sdm.output_folders``: only an empty folder, or one sdm made for ``kind``,
is replaced without ``overwrite``) and writes the output marker.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdm.output_folders import check_output_dir, marker_content, write_marker

# Set to "0" to use the portable rename-aside path even where renameat2 works (filesystems that misreport).
EXCHANGE_ENV = "SDM_ATOMIC_EXCHANGE"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


def _crash_point(name: str) -> None:
    """A no-op between the steps of a swap; tests replace it to kill a writer exactly there."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _owned_name(directory: Path, what: str) -> Path:
    # The token is time_ns in hex (fixed width for centuries), so the newest leftover sorts last; the random
    # tail keeps two writers of one nanosecond apart.
    return directory.with_name(f".{directory.name}.{what}-{_host()}-{os.getpid()}-"
                               f"{time.time_ns():x}{secrets.token_hex(2)}")


def make_temp_dir(directory: str | Path) -> Path:
    """A new empty folder ``.<name>.tmp-<host>-<pid>-<token>`` beside ``directory`` (umask permissions)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _owned_name(directory, "tmp")
    tmp.mkdir()
    return tmp


def write_file(path: str | Path, data: bytes) -> Path:
    """Replace the file ``path`` with ``data`` all at once: a reader sees the old or the new content, never part.

    Written to ``.<name>.tmp-<host>-<pid>-<token>`` beside it (the user's umask, not mkstemp's 0600), synced,
    renamed over ``path``; a failure removes the temp file. Returns ``path``.
    """
    path = Path(path)
    tmp = _owned_name(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _libc_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _libc_renameat2()


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step; False when this system or filesystem cannot."""
    if _RENAMEAT2 is None or os.environ.get(EXCHANGE_ENV) == "0":
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the filesystem has no exchange (e.g. some network filesystems)
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def replace_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``final``; ``final`` holds the old or the new folder at every moment."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists() and not final.is_symlink():
        os.rename(tmp, final)
        return final
    if exchange(tmp, final):
        _crash_point("exchanged")
        shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now under the temp name
        return final
    old = _owned_name(final, "old")
    os.rename(final, old)
    _crash_point("aside")
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _writer_alive(host: str, pid: int) -> bool:
    if host != _host():
        return True  # another machine's writer: we cannot tell, so never touch its folders
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_leftovers(parent: str | Path, name_pattern: str = "*") -> list[Path]:
    """Finish what crashed writers left in ``parent`` for targets matching ``name_pattern``; returns what it did.

    A dead writer's ``.<name>.old-*`` is renamed back to ``<name>`` when that is
    missing (the crash came between the two renames), else removed; its
    ``.<name>.tmp-*`` is removed. A live writer's folders are left alone.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    dead = []
    for entry in sorted(os.listdir(parent)):
        m = _LEFTOVER.match(entry)
        if m and fnmatch.fnmatchcase(m["name"], name_pattern) and not _writer_alive(m["host"], int(m["pid"])):
            dead.append((m["token"], m["name"], m["what"], parent / entry))
    done = []
    # Newest aside folder first: when several wait to be restored, the newest is the last complete target.
    for _, name, what, path in sorted(dead, reverse=True):
        target = parent / name
        if what == "old" and not target.exists() and not target.is_symlink():
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def recover(directory: str | Path) -> list[Path]:
    """:func:`clean_leftovers` for one target folder."""
    directory = Path(directory)
    return clean_leftovers(directory.parent, glob_escape(directory.name))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_dir(directory: str | Path, *, kind: str | None = None, overwrite: bool = False,
               sources: Iterable[str | Path] = (), source: str | Path | None = None, stamp: bool = True,
               marker: dict[str, Any] | None = None, flag: str = "--out") -> Iterator[Path]:
    """Yield a temp folder beside ``directory``; on success it replaces ``directory``, on error it is removed.

    Without ``kind`` any existing ``directory`` is replaced (sdm's own folders:
    checkpoints, caches). With ``kind`` the target is checked first and again
    just before the swap (``sdm.output_folders.check_output_dir`` with
    ``overwrite``, ``sources`` and ``flag``), and the temp folder gets a marker
    (``kind``, ``source``, ``marker`` extras; ``stamp=False`` for data folders
    whose content hash must not change from run to run).
    """
    directory = Path(directory)
    sources = list(sources)
    if kind is not None:
        check_output_dir(directory, kind, overwrite=overwrite, sources=sources, flag=flag)
    recover(directory)
    tmp = make_temp_dir(directory)
    try:
        yield tmp
        if kind is not None:
            write_marker(tmp, marker_content(kind, source, stamp=stamp, extra=marker))
            check_output_dir(directory, kind, overwrite=overwrite, sources=sources, flag=flag)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
