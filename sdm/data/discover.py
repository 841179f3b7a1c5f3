"""List a source folder's image/label(/instance) pairs from a format's path templates.

Only file names are looked at here (no decoding): missing pairs, duplicate
stems, stray labels and unknown part files are reported as ``Problem``s. A
symbolic link whose target lies outside the source folder is refused
(``symlink_outside``, a problem about the dataset, not one example, so it
stops ``prepare`` even with ``--on-error skip``): the prepared data and its
fingerprint must hold only what the source holds. Links within it are fine.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sdm.data.formats import Format, Role
from sdm.data.problems import Problem

ALL = "all"  # the split of items from formats without official splits (assigned later)


@dataclass(frozen=True)
class Item:
    """One example: paths relative to the source folder."""

    id: str
    split: str
    image: str
    label: str | None = None
    # (class index, mask path) for formats whose labels are per-class masks.
    parts: tuple[tuple[int, str], ...] = ()
    instance: str | None = None


@dataclass
class Discovery:
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    has_instances: bool = False


def _compile(template: str, split_dir: str | None, extensions: tuple[str, ...]) -> tuple[str, re.Pattern[str]]:
    """(the literal folder to walk, a regex over paths relative to the source)."""
    if split_dir is not None:
        template = template.replace("{split}", split_dir)
    parts = template.split("/")
    literal: list[str] = []
    for p in parts[:-1]:
        if "{" in p:
            break
        literal.append(p)
    pattern = ""
    for piece in re.split(r"(\{[a-z_]+\})", template):
        if piece == "{key}":
            pattern += r"(?P<key>[^/]+?)"
        elif piece == "{part}":
            pattern += r"(?P<part>[A-Za-z_]+)"
        elif piece.startswith("{") and piece.endswith("}"):
            pattern += r"[^/]+"
        else:
            pattern += re.escape(piece)
    ext = "|".join(re.escape(e) for e in extensions)
    return "/".join(literal), re.compile(rf"^{pattern}(?:{ext})$", re.IGNORECASE)


SYMLINK_OUTSIDE = "symlink_outside"


def _inside(path: str, real_source: str) -> bool:
    return path == real_source or path.startswith(real_source.rstrip(os.sep) + os.sep)


def _outside_link(source: Path, rel: str, real_source: str) -> Problem | None:
    """A problem when ``source/rel`` (or a linked folder on its way) resolves outside the source folder."""
    path = source / rel
    target = os.path.realpath(path)
    if _inside(target, real_source):
        return None
    # Name the link itself: the file, or the first folder on the way that is one.
    link = path
    for parent in reversed(Path(rel).parents):
        if parent != Path(".") and (source / parent).is_symlink():
            link = source / parent
            break
    what = f"a symbolic link to {os.readlink(link)}" if link.is_symlink() else "a path"
    return Problem(SYMLINK_OUTSIDE, rel, str(link),
                   f"{what} (resolves to {os.path.realpath(link)}), outside the source folder {real_source}; "
                   "copy the data in, or link the whole source folder instead")


def _scan(
    source: Path, role: Role, split_dir: str | None, problems: list[Problem] | None = None,
) -> tuple[bool, list[tuple[str, re.Match[str]]]]:
    """(whether the role's folder exists, matching files as (relpath, match)) in sorted order.

    With ``problems``, a matching file that resolves outside the source is reported there and left out.
    """
    folder, regex = _compile(role.template, split_dir, role.extensions)
    root = source / folder
    if not root.is_dir():
        return False, []
    real_source = os.path.realpath(source)
    # A linked role folder (images -> /elsewhere) makes every file in it resolve outside: check each
    # file only when something on its way may be a link (os.walk does not descend into linked folders).
    root_outside = not _inside(os.path.realpath(root), real_source)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(source).as_posix()
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            m = regex.match(rel)
            if not m:
                continue
            if root_outside or os.path.islink(os.path.join(dirpath, name)):
                problem = _outside_link(source, rel, real_source)
                if problem is not None:
                    if problems is not None:
                        problems.append(problem)
                    continue
            found.append((rel, m))
    return True, found


def _normalize(key: str, how: str) -> str | None:
    if how == "int":
        return str(int(key)) if key.isdigit() else None
    return key


def _by_key(
    files: list[tuple[str, re.Match[str]]], how: str, role_name: str, source: Path, problems: list[Problem],
    dups: set[str],
) -> dict[str, str]:
    """key -> the single file for it; duplicates become problems and are dropped."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rel, m in files:
        key = _normalize(m.group("key"), how)
        if key is None:
            problems.append(Problem("bad_name", rel, str(source / rel), f"{role_name} file name is not a numeric id"))
            continue
        groups[key].append(rel)
    out = {}
    for key, rels in groups.items():
        if len(rels) > 1:
            paths = ", ".join(str(source / r) for r in rels)
            problems.append(Problem("duplicate_stem", key, str(source / rels[0]),
                                    f"{len(rels)} {role_name} files share the stem {key!r}: {paths}"))
            dups.add(key)
        else:
            out[key] = rels[0]
    return out


def _parts_by_key(
    files: list[tuple[str, re.Match[str]]], fmt: Format, class_names: list[str], source: Path,
    problems: list[Problem], dups: set[str],
) -> dict[str, tuple[tuple[int, str], ...]]:
    index = {name: i for i, name in enumerate(class_names)}
    groups: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rel, m in files:
        key = _normalize(m.group("key"), fmt.key)
        part = m.group("part")
        if key is None or part not in index or index[part] == 0:
            problems.append(Problem("unknown_part", key or rel, str(source / rel),
                                    f"not a known part mask (parts: {', '.join(class_names[1:])})"))
            continue
        groups[key][index[part]].append(rel)
    out = {}
    for key, by_part in groups.items():
        dup = {p: r for p, r in by_part.items() if len(r) > 1}
        if dup:
            p, rels = next(iter(dup.items()))
            problems.append(Problem("duplicate_stem", key, str(source / rels[0]),
                                    f"{len(rels)} {class_names[p]!r} masks for id {key}: "
                                    + ", ".join(str(source / r) for r in rels)))
            dups.add(key)
            continue
        out[key] = tuple(sorted((p, rels[0]) for p, rels in by_part.items()))
    return out


def discover(fmt: Format, source: str | Path, class_names: list[str]) -> Discovery:
    """Pair the source's files by key; everything found wrong is a ``Problem`` (nothing raises)."""
    source = Path(source)
    result = Discovery()
    if not source.is_dir():
        result.problems.append(Problem("missing_directory", "", str(source), "the source folder does not exist"))
        return result
    splits = dict(fmt.splits) if fmt.splits is not None else {ALL: None}
    # Instance maps are all or nothing: if any split has them, every example needs one.
    if fmt.instance is not None:
        result.has_instances = fmt.instances_required or any(
            _scan(source, fmt.instance, split_dir)[0] for split_dir in splits.values())
    seen: dict[str, str] = {}
    for split, split_dir in splits.items():
        img_ok, img_files = _scan(source, fmt.image, split_dir, result.problems)
        if not img_ok:
            folder, _ = _compile(fmt.image.template, split_dir, fmt.image.extensions)
            result.problems.append(Problem("missing_directory", "", str(source / folder),
                                           f"no such folder (the {fmt.name!r} format expects it)"))
            continue
        dups: set[str] = set()
        images = _by_key(img_files, fmt.key, "image", source, result.problems, dups)
        labels: dict[str, str] = {}
        parts: dict[str, tuple[tuple[int, str], ...]] = {}
        if fmt.label_parts is not None:
            _, part_files = _scan(source, fmt.label_parts, split_dir, result.problems)
            parts = _parts_by_key(part_files, fmt, class_names, source, result.problems, dups)
        elif fmt.label is not None:
            _, label_files = _scan(source, fmt.label, split_dir, result.problems)
            labels = _by_key(label_files, fmt.key, "label", source, result.problems, dups)
        instances: dict[str, str] = {}
        use_instances = result.has_instances
        if use_instances:
            assert fmt.instance is not None
            _, inst_files = _scan(source, fmt.instance, split_dir, result.problems)
            instances = _by_key(inst_files, fmt.key, "instance", source, result.problems, dups)
        label_keys = set(parts) if fmt.label_parts is not None else set(labels)
        for key in sorted(label_keys - set(images) - dups):
            rel = labels.get(key) or parts[key][0][1]
            result.problems.append(Problem("missing_image", key, str(source / rel), "a label without an image"))
        for key, image in sorted(images.items()):
            if key in dups:
                continue
            if key not in label_keys:
                result.problems.append(Problem("missing_label", key, str(source / image), "no label for this image"))
                continue
            if use_instances and key not in instances:
                result.problems.append(Problem("missing_instance", key, str(source / image),
                                               "no instance map for this image"))
                continue
            if key in seen:
                result.problems.append(Problem("duplicate_stem", key, str(source / image),
                                               f"the id {key!r} is in both {seen[key]!r} and {split!r}"))
                continue
            seen[key] = split
            result.items.append(Item(id=key, split=split, image=image, label=labels.get(key),
                                     parts=parts.get(key, ()), instance=instances.get(key) if use_instances else None))
    return result
