"""Preparation on a Ray cluster: decoding, checking and resizing run as Ray tasks; writing stays in the driver.

Each task takes a chunk of consecutive examples and returns what
``sdm.data.prepare._process`` returns for each (a row, or the Problem that
stops it); the driver takes the results back in input order and feeds the
same ``ShardWriter``s as the single-machine path, so the shards, their row
groups and manifest.json are byte-identical whichever path made them. A
bounded number of chunks is in flight, so the driver holds a few chunks of
rows, never the whole dataset.

Every node reads the source at the same path: on a multi-node cluster it is
on a shared filesystem (or a copy at that path on each node).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sdm.data.discover import Item

DEFAULT_CHUNK = 16


def _process_chunk(process: Callable[..., Any], items: Sequence[Item], args: tuple, check_only: bool,
                   cwd: str) -> list[Any]:
    """In a Ray worker: ``process(item, *args[:4], check_only_event, *args[4:])`` for each of ``items``."""
    if not Path(args[1]).is_absolute() and os.getcwd() != cwd:
        # A relative source is read from the driver's working directory, and problems name it as the driver
        # does (paths in manifest.json's 'skipped' are the same whichever path prepared the data).
        os.chdir(cwd)
    event = threading.Event()
    if check_only:
        event.set()
    return [process(it, *args[:4], event, *args[4:]) for it in items]


def ray_map_items(process: Callable[..., Any], items: Iterable[Item], args: tuple, check_only: threading.Event, *,
                  chunk: int = DEFAULT_CHUNK, in_flight: int | None = None) -> Iterator[Any]:
    """``process(item, *args[:4], check_only, *args[4:])`` for every item, on Ray tasks, yielded in input order.

    ``process`` is ``sdm.data.prepare._process`` (passed in, so this module does not import prepare: Ray
    ships it by reference), ``args`` = (format, source, num_classes, size, max_pixels). Chunks submitted after
    ``check_only`` is set (a problem was found, nothing will be written) only check their examples.
    ``in_flight`` chunks at most (default: twice the cluster's CPUs).
    """
    import ray

    from sdm.train.ray_run import ensure_ray

    ensure_ray()
    if in_flight is None:
        in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(_process_chunk)
    cwd = os.getcwd()
    shared = ray.put(args)  # the format and classes once in the object store, not once per task
    it = iter(items)
    pending: deque = deque()

    def submit() -> bool:
        batch = [x for _, x in zip(range(chunk), it, strict=False)]
        if batch:
            pending.append(remote.remote(process, batch, shared, check_only.is_set(), cwd))
        return bool(batch)

    while len(pending) < in_flight and submit():
        pass
    while pending:
        results = ray.get(pending.popleft())
        submit()
        yield from results
