"""Random access to a split's rows in Parquet shards, one row group at a time, in bounded memory.

A split's rows are numbered across its shards in manifest order (shard 0's
row groups, then shard 1's ...), the order ``PreparedDataset`` has always used.
Opening reads only the Parquet footers (rows per row group) and the ``id``
column; a row's bytes are read with its whole row group (the smallest unit a
Parquet reader decodes) and the last ``cache_groups`` groups are kept (LRU),
so memory is a few row groups (~``row_group_mb`` each, 16 MiB from ``sdm data
prepare``) whatever the size of the split.

Files are read, not memory-mapped (mapped pages, once touched, would stay in
the process's RSS), and opened per row-group read (an open Parquet file keeps
buffers of its own); evicted groups' memory goes back to the OS. A forked
DataLoader worker, or a process that received the object by pickling, starts
with an empty cache of its own.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_CACHE_GROUPS = 2


class ShardRows:
    """Rows of the given shards (in order), read by row group; ``column(name, row)`` -> the cell's bytes."""

    def __init__(self, paths: list[Path], columns: list[str], cache_groups: int = DEFAULT_CACHE_GROUPS) -> None:
        if cache_groups < 1:
            raise ValueError(f"cache_groups must be >= 1, got {cache_groups}")
        self.paths = [Path(p) for p in paths]
        self.columns = list(columns)
        self.cache_groups = cache_groups
        # groups[k] = (shard index, row group index); starts[k] = the split row of its first row.
        self._groups: list[tuple[int, int]] = []
        self._meta: list[pq.FileMetaData] = []
        starts = [0]
        for i, path in enumerate(self.paths):
            meta = pq.read_metadata(path)
            self._meta.append(meta)
            for g in range(meta.num_row_groups):
                self._groups.append((i, g))
                starts.append(starts[-1] + meta.row_group(g).num_rows)
        self._starts = starts
        self._cache: OrderedDict[int, dict[str, pa.Array]] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # cached groups stay per process
        return state

    def ids(self) -> list[str]:
        """The ``id`` column of every row, in row order (read alone: a few bytes per row)."""
        ids: list[str] = []
        for path in self.paths:
            ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
        if len(ids) != len(self):
            raise ValueError(f"shards hold {len(ids)} ids but their footers list {len(self)} rows")
        return ids

    def locate(self, row: int) -> tuple[int, int]:
        """(row group number in split order, row within it) of split row ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} rows")
        k = bisect.bisect_right(self._starts, row) - 1
        return k, row - self._starts[k]

    def _group(self, k: int) -> dict[str, pa.Array]:
        if self._pid != os.getpid():  # forked: the parent's cached groups are not ours to use
            self._cache, self._pid = OrderedDict(), os.getpid()
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        shard, g = self._groups[k]
        # Opened per read (the footer is kept): an open ParquetFile holds buffers of its own, so keeping one
        # per shard would make memory grow with the number of shards.
        with pq.ParquetFile(self.paths[shard], metadata=self._meta[shard]) as f:
            table = f.read_row_group(g, columns=self.columns, use_threads=False)
        group = {c: table.column(c).combine_chunks() for c in self.columns}
        self._cache[k] = group
        if len(self._cache) > self.cache_groups:
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
            # Hand the evicted group's pages back to the OS: the pool would otherwise keep several groups' worth.
            pa.default_memory_pool().release_unused()
        return group

    def cell(self, column: str, row: int) -> np.ndarray:
        """The bytes of ``column`` at split row ``row``: uint8 [n] (a view of the cached row group)."""
        k, j = self.locate(row)
        return np.frombuffer(self._group(k)[column][j].as_buffer(), np.uint8)
