"""The prepared-data format: Parquet shards of PNG-encoded examples.

One row per example: ``id``, ``split``, ``source`` (image path in the source),
``image`` (RGB PNG), ``label`` (8-bit PNG, 16-bit when > 256 classes),
``instance`` (16-bit PNG, only when the dataset has instances), ``height``,
``width``. zstd-compressed, row groups of ~``row_group_mb``, shards of
~``shard_mb``, named ``<split>-<index:05d>.parquet``. PNG keeps labels exact and
makes the bytes deterministic, so the same inputs give the same shard hashes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdm.data.manifest import MANIFEST, Manifest, ManifestError
from sdm.errors import InputError

PNG_LEVEL = 1  # zlib level: within ~3% of level 3's size on 256 px photos, in ~60% of the time


def schema(has_instances: bool) -> pa.Schema:
    fields = [
        pa.field("id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("label", pa.binary()),
    ]
    if has_instances:
        fields.append(pa.field("instance", pa.binary()))
    fields += [pa.field("height", pa.int32()), pa.field("width", pa.int32())]
    return pa.schema(fields)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H,W,3] RGB, or an integer id map [H,W] (8-bit when < 256, else 16-bit) -> PNG bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    elif array.max(initial=0) < 256:
        array = array.astype(np.uint8)
    else:
        array = array.astype(np.uint16)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def decode_png(data: bytes, rgb: bool = False) -> np.ndarray:
    """PNG bytes -> uint8 [H,W,3] RGB when ``rgb``, else the id map [H,W] (uint8 or uint16)."""
    flags = cv2.IMREAD_COLOR if rgb else cv2.IMREAD_UNCHANGED
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise InputError("corrupt PNG in a prepared shard (re-run `sdm data prepare`)")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if rgb else array


def compact_ids(instance: np.ndarray) -> np.ndarray:
    """Instance ids that do not fit 16 bits are renumbered 0..K-1 (only their distinctness matters)."""
    if instance.max(initial=0) < 65536 and instance.min(initial=0) >= 0:
        return instance
    _, inverse = np.unique(instance, return_inverse=True)
    return inverse.reshape(instance.shape)


@dataclass
class ShardInfo:
    file: str
    split: str
    rows: int
    bytes: int
    sha256: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardChecksumError(InputError):
    """A prepared shard's bytes differ from the sha256 manifest.json lists for it (corrupt or replaced)."""


# Shards verified by this process, keyed by (real path, size, mtime_ns, sha256): each is hashed once per
# process however many datasets open it (train and val loaders, evaluation), and again if the file changes.
_VERIFIED: set[tuple[str, int, int, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def verify_shard(path: Path, sha256: str, size: int | None = None) -> None:
    """Check ``path`` against its manifest entry (``bytes``, ``sha256``); raise ``ShardChecksumError`` naming it.

    The size is compared first (free); the hash reads the whole file (~1 GB/s), once per process.
    """
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, sha256)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
    fix = "the file is corrupt or was replaced: run `dvc checkout` / `dvc pull` or `sdm data prepare` again"
    if size is not None and st.st_size != size:
        raise ShardChecksumError(f"{path}: {st.st_size} bytes, but manifest.json lists {size}; {fix}")
    actual = _sha256(path)
    if actual != sha256:
        raise ShardChecksumError(f"{path}: sha256 {actual} differs from manifest.json's {sha256}; {fix}")
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


def verify_shards(prepared_dir: str | Path, manifest: Manifest, split: str | None = None) -> None:
    """Check every shard of ``split`` (all splits when None) against manifest.json's size and sha256.

    Raises ``ManifestError`` for a missing shard or checksum, ``ShardChecksumError`` (naming the shard, the
    expected and the actual hash) for a changed one. Each shard is hashed once per process.
    """
    prepared_dir = Path(prepared_dir)
    entries = manifest.shards if split is None else manifest.shard_entries(split)
    missing = [str(prepared_dir / e["file"]) for e in entries if not (prepared_dir / e["file"]).is_file()]
    if missing:
        raise ManifestError(f"{prepared_dir}: shard(s) listed in manifest.json are missing: "
                            f"{', '.join(missing)}; run `dvc pull` / `dvc checkout` or prepare again")
    for entry in entries:
        if not isinstance(entry.get("sha256"), str):
            raise ManifestError(f"{prepared_dir / MANIFEST}: shard {entry.get('file')!r} has no sha256; "
                                "prepare the data again")
        verify_shard(prepared_dir / entry["file"], entry["sha256"], entry.get("bytes"))


class ShardWriter:
    """Writes rows of one split into size-bounded Parquet shards under ``out_dir``."""

    def __init__(self, out_dir: Path, split: str, has_instances: bool, shard_mb: int = 32, row_group_mb: int = 16):
        self.out_dir = out_dir
        self.split = split
        self.schema = schema(has_instances)
        self.shard_bytes = shard_mb << 20
        self.row_group_bytes = min(row_group_mb, shard_mb) << 20
        self.shards: list[ShardInfo] = []
        self._rows: list[dict] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._written = 0
        self._shard_rows = 0

    def add(self, row: dict) -> None:
        self._rows.append(row)
        self._buffered += sum(len(row[k]) for k in ("image", "label", "instance") if row.get(k) is not None)
        if self._buffered >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._path = self.out_dir / f"{self.split}-{len(self.shards):05d}.parquet"
            self._writer = pq.ParquetWriter(self._path, self.schema, compression="zstd")
            self._written = self._shard_rows = 0
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self._written += self._buffered
        self._shard_rows += len(self._rows)
        self._rows, self._buffered = [], 0
        if self._written >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        assert self._writer is not None and self._path is not None
        self._writer.close()
        self.shards.append(ShardInfo(file=self._path.name, split=self.split, rows=self._shard_rows,
                                     bytes=self._path.stat().st_size, sha256=_sha256(self._path)))
        self._writer = None

    def close(self) -> list[ShardInfo]:
        self._flush()
        if self._writer is not None:
            self._close_shard()
        return self.shards


def read_rows(paths: list[Path], columns: list[str]) -> pa.Table:
    """The given columns of every row of these shards, in order."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})
