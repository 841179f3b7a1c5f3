"""Check a source dataset without writing anything (``sdm data validate``).

The same checks as ``sdm data prepare``: pairing and names from the file
listing, then every example decoded (unreadable or truncated files, size
mismatches, label values outside the classes with pixel counts, multi-channel
labels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sdm.data.discover import discover
from sdm.data.formats import get_format, load_classes
from sdm.data.prepare import ordered_map
from sdm.data.problems import Problem, format_report, require_source
from sdm.data.readers import DEFAULT_MAX_IMAGE_PIXELS, ItemProblem, load_item


@dataclass
class ValidationReport:
    source: str
    format: str
    num_classes: int
    examples: int
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{self.source} ({self.format}, {self.num_classes} classes): {self.examples} example(s) paired"
                + (" [" + ", ".join(f"{s}: {n}" for s, n in self.counts.items()) + "]" if self.counts else ""))
        return head + "\n" + format_report(self.source, self.problems)


def _check(args: tuple) -> Problem | None:
    item, fmt, source, num_classes, max_pixels = args
    try:
        load_item(item, fmt, source, num_classes, max_pixels=max_pixels)
    except ItemProblem as e:
        return e.problem
    return None


def validate(format_name: str, source: str | Path, *, workers: int | None = None,
             progress: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ValidationReport:
    """Every problem in ``source`` (format ``format_name``); raises only for an unknown format / class list.

    ``max_image_pixels``: ``data.max_image_pixels``, the largest W x H of any file (from its header).
    """
    fmt = get_format(format_name)
    source = Path(source)
    require_source(source)
    classes = load_classes(fmt, source)
    found = discover(fmt, source, classes.names)
    counts: dict[str, int] = {}
    for item in found.items:
        counts[item.split] = counts.get(item.split, 0) + 1
    problems = list(found.problems)
    jobs = [(item, fmt, source, classes.num_classes, max_image_pixels) for item in found.items]
    results = ordered_map(_check, jobs, workers or os.cpu_count() or 1)
    problems += [p for p in tqdm(results, total=len(jobs), desc="validate", unit="img", disable=not progress) if p]
    return ValidationReport(source=str(source), format=fmt.name, num_classes=classes.num_classes,
                            examples=len(found.items), counts=counts, problems=problems)
