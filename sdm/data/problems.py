"""Problems found in a source dataset, and the report that lists them."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from sdm.errors import InputError

# Kinds that are about one example (they can be skipped with --on-error skip);
# anything else (a missing folder or class list) stops preparation outright.
ITEM_KINDS = frozenset({
    "missing_label", "missing_image", "missing_instance", "duplicate_stem", "bad_name", "unknown_part",
    "unreadable_image", "unreadable_label", "unreadable_instance", "size_mismatch", "label_out_of_range",
    "multichannel_label", "multichannel_instance",
})


@dataclass(frozen=True)
class Problem:
    """One thing wrong: its kind, the example id, the file it is about, what is wrong."""

    kind: str
    id: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.kind}]"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class DataProblemsError(InputError):
    """The source has problems and --on-error is fail: nothing was written."""

    def __init__(self, source: str, problems: list[Problem], hint: str = ""):
        self.problems = problems
        super().__init__(format_report(source, problems, hint=hint))


def require_source(source: str | Path) -> None:
    """Stop early, before the class list is looked for, when the source folder is missing."""
    if not Path(source).is_dir():
        raise DataProblemsError(str(source), [Problem("missing_directory", "", str(source),
                                                      "the source folder does not exist")])


def format_report(source: str, problems: list[Problem], limit: int = 20, hint: str = "") -> str:
    """A readable report: counts per kind, then the first ``limit`` problems."""
    if not problems:
        return f"{source}: no problems found"
    counts = Counter(p.kind for p in problems)
    lines = [f"{source}: {len(problems)} problem(s): " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    if hint:
        lines.append(hint)
    return "\n".join(lines)
