"""``manifest.json``: what a prepared dataset holds and how it was made.

It has no timestamps or absolute machine paths, so preparing the same inputs
with the same parameters gives byte-identical output (and the same DVC hash).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdm.errors import InputError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class ManifestError(InputError, FileNotFoundError):
    """A prepared dataset is missing or unreadable; the message says which command makes it."""


@dataclass
class Manifest:
    format: str
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    has_instances: bool
    # [H, W] of every prepared image, label and instance map.
    image_size: list[int]
    # split -> number of examples.
    counts: dict[str, int]
    # split -> fraction of labelled pixels per class (sums to 1).
    class_pixel_frequency: dict[str, list[float]]
    # [{file, split, rows, bytes, sha256}], files relative to the prepared folder.
    shards: list[dict[str, Any]]
    # sha256 over (path, sha256) of every source file that went in.
    source_fingerprint: str
    # How it was made: format, source, image_size, split rule, on_error ...
    params: dict[str, Any]
    # Examples left out with --on-error skip: [{kind, id, path, message}].
    skipped: list[dict[str, str]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def splits(self) -> list[str]:
        return [s for s, n in self.counts.items() if n > 0]

    def shard_files(self, split: str) -> list[str]:
        return [s["file"] for s in self.shards if s["split"] == split]

    def shard_entries(self, split: str) -> list[dict[str, Any]]:
        """The split's shard records ``{file, split, rows, bytes, sha256}``, in manifest order."""
        return [s for s in self.shards if s["split"] == split]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dumps(data: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (palettes, frequencies)."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s+([-\d.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def write_manifest(manifest: Manifest, out_dir: str | Path) -> Path:
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(_dumps(manifest.to_dict()) + "\n")
    tmp.replace(path)
    return path


def _how_to_make(prepared_dir: Path) -> str:
    """The way to a prepared dataset at ``prepared_dir``, by a command that overwrites nothing else.

    Never ``--out`` a raw dataset (a source) or a folder of another dataset: a preset's folder gets
    that preset's command, a raw folder gets a prepare into a folder of its own.
    """
    from sdm.config import available_presets, resolve

    here = prepared_dir.resolve()
    for name in available_presets():
        data = resolve(preset=name, params=None).data
        if Path(data.prepared).resolve() == here:
            make = f"`sdm data prepare --preset {name}`"
            if not Path(data.source).is_dir():
                make = (f"`sdm data synth --preset {name}` then {make}" if data.format == "folder" and name == "toy"
                        else f"{make} once the {name} download is in {data.source} (data/README.md)")
            return f"make it with {make}, or fetch a versioned copy with `dvc pull`"
        if Path(data.source).resolve() == here:
            return (f"{prepared_dir} is the raw {name} dataset (data.source), not a prepared one: pass its prepared "
                    f"form {data.prepared}, made by `sdm data prepare --preset {name}`")
    if prepared_dir.is_dir() and not (prepared_dir / MANIFEST).exists() and any(prepared_dir.iterdir()):
        out = prepared_dir.parent / f"{prepared_dir.name}-prepared"
        if (prepared_dir / "labels").is_dir() and (prepared_dir / "images").is_dir():
            return (f"{prepared_dir} looks like a raw dataset (images/, labels/), not a prepared one: prepare it "
                    f"into a folder of its own, `sdm data prepare --format folder --source {prepared_dir} "
                    f"--out {out}`, and pass that")
        return (f"{prepared_dir} holds other files, not a prepared dataset: pass the folder sdm data prepare made "
                f"(its --out, data.prepared in params.yaml)")
    return (f"make it with `sdm data prepare --out {prepared_dir}` (or `dvc repro prepare` for the configured "
            f"dataset), or fetch a versioned copy with `dvc pull`")


def read_manifest(prepared_dir: str | Path) -> Manifest:
    """Read ``<prepared_dir>/manifest.json``; a clear ``ManifestError`` when missing or malformed."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST
    if not path.is_file():
        what = "does not exist" if not prepared_dir.exists() else f"has no {MANIFEST}"
        raise ManifestError(f"prepared dataset {prepared_dir} {what}: {_how_to_make(prepared_dir)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable ({e}): {_how_to_make(prepared_dir)}") from e
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: not a manifest of schema version {SCHEMA_VERSION}: {_how_to_make(prepared_dir)}")
    names = {f.name for f in dataclasses.fields(Manifest)}
    missing = names - set(data) - {"skipped"}
    if missing:
        raise ManifestError(f"{path}: missing keys {sorted(missing)}: {_how_to_make(prepared_dir)}")
    return Manifest(**{k: v for k, v in data.items() if k in names})
