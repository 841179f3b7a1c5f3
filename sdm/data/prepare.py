"""Prepare a source dataset: check it, resize it, write Parquet shards + manifest.json.

Order of work: list the files (pairing problems), then decode/check/resize
every example on all cores, or on Ray tasks over a cluster with ``ray=True``
(``sdm.data.prepare_ray``: the same shards byte for byte), then write. With
``on_error="fail"`` any problem stops it and nothing is left at ``out``; with
``"skip"`` bad examples are left out and listed in the manifest. Output goes
to a temp folder beside ``out`` that is swapped into place at the end (``sdm.atomic``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from sdm.atomic import atomic_dir
from sdm.data.discover import ALL, Item, discover
from sdm.data.formats import Format, get_format, load_classes
from sdm.data.manifest import Manifest, write_manifest
from sdm.data.problems import ITEM_KINDS, DataProblemsError, Problem, require_source
from sdm.data.readers import DEFAULT_MAX_IMAGE_PIXELS, ItemProblem, load_item
from sdm.data.shards import ShardWriter, compact_ids, encode_png
from sdm.data.split import assign_splits
from sdm.data.transforms import resize_pair
from sdm.errors import InputError
from sdm.locks import lock_target
from sdm.output_folders import PREPARED, check_output_dir

T = TypeVar("T")
R = TypeVar("R")
SPLIT_ORDER = ("train", "val")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map`` on a thread pool, in input order, with a bounded number of items in flight.

    Threads suffice: PNG/JPEG decoding, cv2 resizing and PNG encoding release the GIL.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = iter(items)
        pending = deque(pool.submit(fn, x) for _, x in zip(range(workers * 4), it, strict=False))
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


def _process(
    item: Item, fmt: Format, source: Path, num_classes: int, size: tuple[int, int], check_only: threading.Event,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Any:
    """One example -> (row, class pixel counts, digests), or the Problem that stops it.

    Once ``check_only`` is set (a problem was found and nothing will be written)
    examples are only checked, not resized and encoded.
    """
    try:
        loaded = load_item(item, fmt, source, num_classes, max_pixels=max_pixels)
    except ItemProblem as e:
        return e.problem
    if check_only.is_set():
        return None
    image, label, instance = resize_pair(loaded.image, loaded.label, loaded.instance, size)
    row = {
        "id": item.id, "split": item.split, "source": item.image,
        "image": encode_png(image), "label": encode_png(label),
        "height": size[0], "width": size[1],
    }
    if instance is not None:
        row["instance"] = encode_png(compact_ids(instance))
    return row, np.bincount(label.ravel(), minlength=num_classes), loaded.digests


def _fingerprint(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\t{digests[rel]}\n".encode())
    return h.hexdigest()


def prepare(
    format_name: str,
    source: str | Path,
    out: str | Path,
    image_size: tuple[int, int] | list[int],
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    on_error: str = "fail",
    shard_mb: int = 32,
    workers: int | None = None,
    progress: bool = False,
    extra_files: dict[str, str] | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    overwrite: bool = False,
    ray: bool = False,
) -> Manifest:
    """Prepare ``source`` (in format ``format_name``) into ``out`` at ``image_size`` = [H, W].

    Raises ``DataProblemsError`` (nothing written) when there are problems and
    ``on_error == "fail"``, or when a problem is not about a single example.
    ``extra_files`` (name -> text) are written into the output (the resolved config).
    An existing ``out`` is replaced only when sdm prepared it (or it is empty) unless ``overwrite``, never
    when it is or holds ``source`` (``sdm.output_folders``); one writer at a time (``sdm.locks``).
    ``ray``: decode/check/resize on Ray tasks (``RAY_ADDRESS``'s cluster, else a local one); same output.
    """
    if on_error not in ("fail", "skip"):
        raise InputError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    fmt = get_format(format_name)
    source, out = Path(source), Path(out)
    size = (int(image_size[0]), int(image_size[1]))
    require_source(source)
    with lock_target(out, f"prepared data output {out}"):
        # Refused outputs fail before any work; the check runs again just before the swap.
        check_output_dir(out, PREPARED, overwrite=overwrite, sources=[source])
        return _prepare(fmt, source, out, size, val_fraction=val_fraction, split_seed=split_seed,
                        on_error=on_error, shard_mb=shard_mb, workers=workers, progress=progress,
                        extra_files=extra_files, max_image_pixels=max_image_pixels, overwrite=overwrite, ray=ray)


def _prepare(fmt: Format, source: Path, out: Path, size: tuple[int, int], *, val_fraction: float, split_seed: int,
             on_error: str, shard_mb: int, workers: int | None, progress: bool, extra_files: dict[str, str] | None,
             max_image_pixels: int, overwrite: bool, ray: bool = False) -> Manifest:
    classes = load_classes(fmt, source)
    found = discover(fmt, source, classes.names)
    fatal = [p for p in found.problems if p.kind not in ITEM_KINDS]
    hint = "nothing was written; fix these or pass --on-error skip to leave the bad examples out"
    if fatal:
        raise DataProblemsError(str(source), fatal, hint="nothing was written")
    if not found.items:
        raise DataProblemsError(str(source), [Problem("no_examples", "", str(source),
                                                      f"no examples found in the {fmt.name!r} layout")],
                                hint="nothing was written")

    items = found.items
    split_rule = "official"
    if fmt.splits is None:
        assigned = assign_splits([i.id for i in items], val_fraction, split_seed)
        items = [dataclasses.replace(i, split=assigned[i.id]) for i in items]
        split_rule = f"sha256(split_seed:id) ranking, val_fraction={val_fraction}, split_seed={split_seed}"
    assert all(i.split != ALL for i in items)
    splits = sorted({i.split for i in items} | {"train", "val"},
                    key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    items = sorted(items, key=lambda i: (splits.index(i.split), i.id))

    workers = workers or os.cpu_count() or 1
    problems = list(found.problems)
    # No stamp in the marker: the folder is DVC-versioned by content, so equal inputs must give equal bytes.
    with atomic_dir(out, kind=PREPARED, overwrite=overwrite, sources=[source], source=source, stamp=False) as tmp:
        writers = {s: ShardWriter(tmp, s, found.has_instances, shard_mb=shard_mb) for s in splits}
        pixel_counts = {s: np.zeros(classes.num_classes, np.int64) for s in splits}
        counts = dict.fromkeys(splits, 0)
        digests: dict[str, str] = {}
        check_only = threading.Event()
        if problems and on_error == "fail":
            check_only.set()
        if ray:
            from sdm.data.prepare_ray import ray_map_items

            results = ray_map_items(_process, items, (fmt, source, classes.num_classes, size, max_image_pixels),
                                    check_only)
        else:
            results = ordered_map(lambda it: _process(it, fmt, source, classes.num_classes, size, check_only,
                                                      max_image_pixels), items, workers)
        for result in tqdm(results, total=len(items), desc=f"prepare {fmt.name}", unit="img", disable=not progress):
            if isinstance(result, Problem):
                problems.append(result)
                if on_error == "fail":
                    check_only.set()  # keep checking, to report every problem at once
                continue
            if result is None or check_only.is_set():
                continue
            row, pix, dig = result
            writers[row["split"]].add(row)
            pixel_counts[row["split"]] += pix
            counts[row["split"]] += 1
            digests.update(dig)
        if problems and on_error == "fail":
            raise DataProblemsError(str(source), problems, hint=hint)
        if not sum(counts.values()):
            # --on-error skip left nothing: an empty dataset is no result (exit 2), not a success.
            raise DataProblemsError(str(source), problems, hint=f"every one of the {len(items)} example(s) is bad: "
                                    "nothing was written (--on-error skip leaves bad examples out, here all of them)")
        shards = [vars(s) for split in splits for s in writers[split].close()]
        manifest = Manifest(
            format=fmt.name,
            num_classes=classes.num_classes,
            class_names=classes.names,
            palette=classes.palette,
            has_instances=found.has_instances,
            image_size=list(size),
            counts=counts,
            class_pixel_frequency={
                s: [round(float(c) / max(int(pixel_counts[s].sum()), 1), 8) for c in pixel_counts[s]] for s in splits
            },
            shards=shards,
            source_fingerprint=_fingerprint(digests),
            params={"format": fmt.name, "source": str(source), "image_size": list(size), "split_rule": split_rule,
                    "on_error": on_error, "shard_mb": shard_mb},
            skipped=[p.to_dict() for p in problems],
        )
        write_manifest(manifest, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return manifest
