"""Output folders a command may replace: the marker sdm writes into them, and the guard that reads it.

Every output folder an sdm command writes holds ``.sdm-output.json`` (what made
it: kind, source, sdm version; for non-data outputs also the command and when).
A command replaces an existing folder only when it is empty, missing, or was
made by sdm for the same kind of output; anything else needs ``--overwrite``.
Some folders are never replaced, ``--overwrite`` or not: the command's own
inputs (or a folder holding one), the working directory or a folder above it,
the home folder, and a training run folder (checkpoints).

Folders sdm wrote before markers existed are recognised by their files
(``LEGACY_SIGNS``), so re-running a command over its own older output works.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from sdm.errors import InputError

MARKER = ".sdm-output.json"

# The kinds of output folder, one per writing command.
SYNTHETIC = "synthetic-scenes"   # sdm data synth
PREPARED = "prepared-data"       # sdm data prepare
EVALUATION = "evaluation"        # sdm evaluate
SAMPLES = "samples"              # sdm sample
CHECKPOINT = "checkpoint"        # sdm convert-official (and every exported checkpoint)
SEGMENTER = "segmenter"          # sdm evaluate train-segmenter


class OutputFolderError(InputError):
    """An output folder sdm refuses to replace; the message names it, what is in it and the way out."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _synthetic(d: Path) -> bool:
    doc = _json(d / "classes.json")
    return isinstance(doc, dict) and (doc.get("generator") or {}).get("name") == "sdm synthetic scenes"


def _prepared(d: Path) -> bool:
    doc = _json(d / "manifest.json")
    return isinstance(doc, dict) and "shards" in doc and "num_classes" in doc


def _files(*names: str) -> Callable[[Path], bool]:
    return lambda d: all((d / n).is_file() for n in names)


# Outputs of sdm versions without markers, recognised by the files only sdm writes together.
LEGACY_SIGNS: dict[str, Callable[[Path], bool]] = {
    SYNTHETIC: _synthetic,
    PREPARED: _prepared,
    EVALUATION: _files("metrics.json", "evaluation.json"),
    SAMPLES: _files("config.yaml", "grid.png"),
    CHECKPOINT: _files("config.json", "model.safetensors"),
    SEGMENTER: _files("segmenter.json", "segmenter.safetensors"),
}


def sdm_version() -> str:
    try:
        return package_version("sdm")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def marker_content(kind: str, source: str | Path | None = None, *, stamp: bool = True,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a marker says. ``stamp=False`` leaves out the time, host and command line.

    Data folders (synth, prepare) are versioned by their content hash (DVC), so
    their marker must be the same on every run with the same inputs: no stamp.
    """
    doc: dict[str, Any] = {"kind": kind, "source": None if source is None else str(source),
                           "sdm_version": sdm_version()}
    if stamp:
        doc.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host=socket.gethostname(),
                   command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "")
    doc.update(extra or {})
    return doc


def write_marker(directory: str | Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as the marker of ``directory`` (a folder still being built: no atomicity needed)."""
    path = Path(directory) / MARKER
    path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
    return path


def read_marker(directory: str | Path) -> dict[str, Any] | None:
    """The marker of ``directory``, or None when it has none (or an unreadable one: then it counts as none)."""
    doc = _json(Path(directory) / MARKER)
    return doc if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def made_by(directory: str | Path) -> str | None:
    """The kind of sdm output ``directory`` is (its marker, else its files), or None."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is not None:
        return marker["kind"]
    return next((kind for kind, sign in LEGACY_SIGNS.items() if sign(directory)), None)


def is_run_folder(directory: str | Path) -> bool:
    """A training run folder: its log, or checkpoints (``checkpoint-*`` / ``final``) inside."""
    directory = Path(directory)
    return ((directory / "train_log.jsonl").is_file() or (directory / "final" / "model.safetensors").is_file()
            or any(p.is_dir() for p in directory.glob("checkpoint-*")))


def describe_entries(directory: Path, show: int = 5) -> str:
    names = sorted(os.listdir(directory))
    listed = ", ".join(names[:show]) + (f", ... ({len(names)} entries)" if len(names) > show else "")
    return listed


def _never_replaced(target: Path, sources: Iterable[str | Path], flag: str) -> None:
    """Folders no ``--overwrite`` replaces: an input of the command, a folder holding one, cwd and above, home."""
    resolved = target.resolve()
    for src in sources:
        s = Path(src).resolve()
        if resolved == s or resolved in s.parents:
            what = "is" if resolved == s else "contains"
            raise OutputFolderError(f"{flag} {target}: {what} this command's input {src}; replacing it would "
                                    "delete the input. Choose another output folder")
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise OutputFolderError(f"{flag} {target}: is the working directory, a folder above it or the home "
                                "folder; an output goes into a folder of its own")


def check_output_dir(directory: str | Path, kind: str, *, overwrite: bool = False,
                     sources: Iterable[str | Path] = (), flag: str = "--out") -> None:
    """Raise ``OutputFolderError`` unless ``directory`` may be replaced by a ``kind`` output.

    Allowed: a missing or empty folder, or one sdm made for ``kind``. Anything
    else (a user's folder, another kind of sdm output) needs ``overwrite``.
    Never allowed: ``sources`` or a folder holding one, the working directory or
    above it, the home folder, a training run folder. ``flag`` names the option in messages.
    """
    directory = Path(directory)
    sources = [s for s in sources if s is not None]
    _never_replaced(directory, sources, flag)
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir():
        raise OutputFolderError(f"{flag} {directory}: exists and is not a folder; remove it or choose another "
                                "output folder")
    if not os.listdir(directory):
        return
    found = made_by(directory)
    if found == kind:
        return
    if is_run_folder(directory):
        raise OutputFolderError(f"{flag} {directory}: is a training run folder (checkpoints); sdm never replaces "
                                f"one, --overwrite or not. Write the {kind} elsewhere, e.g. {directory}/{kind}")
    if overwrite:
        return
    what = f"sdm's {found} output, not {kind}" if found else "not a folder sdm made (no marker)"
    raise OutputFolderError(f"{flag} {directory}: exists, is not empty and is {what}; it holds "
                            f"{describe_entries(directory)}. Nothing was written: choose another folder, or pass "
                            "--overwrite to replace it")
