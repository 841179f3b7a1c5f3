"""sha256 checksums of checkpoint files: computed when a checkpoint is written, verified when it is read.

A file of the right size can still be corrupted (a flipped bit on disk, a
copy that went wrong); safetensors may then load garbage weights without a
word, or fail with a message that does not say which file is bad. Both kinds
of checkpoint (training checkpoints, ``sdm.train.checkpoint``; model
checkpoints such as ``final/``, ``sdm.model``) record the sha256 of each file
they hold and check it before loading, so a corrupted file is one clear error
naming the file and "sha256 mismatch".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from sdm.state_dict_check import CheckpointError

# Large enough to keep hashlib at disk speed, small enough to bound memory.
_CHUNK = 4 << 20


class ChecksumMismatchError(CheckpointError):
    """A checkpoint file whose bytes differ from the sha256 recorded when it was written (an InputError)."""


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file at ``path`` (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(directory: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` for each of ``names`` that exists in ``directory``."""
    directory = Path(directory)
    return {name: sha256_file(directory / name) for name in names if (directory / name).is_file()}


def verify_file(path: str | Path, expected: str) -> None:
    """Raise :class:`ChecksumMismatchError` naming ``path`` when its sha256 is not ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise ChecksumMismatchError(f"{path}: missing (the checkpoint records its sha256, so it was written)")
    found = sha256_file(path)
    if found != expected:
        raise ChecksumMismatchError(f"{path}: sha256 mismatch: the file is corrupted (recorded {expected[:16]}..., "
                                    f"found {found[:16]}...)")


def verify_files(directory: str | Path, expected: Mapping[str, str], names: Iterable[str] | None = None) -> None:
    """Verify the files of ``directory`` listed in ``expected`` (only ``names`` among them, when given)."""
    directory = Path(directory)
    wanted = expected if names is None else {n: expected[n] for n in names if n in expected}
    for name, digest in wanted.items():
        verify_file(directory / name, digest)
