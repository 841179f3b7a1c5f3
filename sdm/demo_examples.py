"""What ``make demo`` leaves to try the model with: label maps at the model's size and a ready request.

The raw synthetic scenes are larger than the model (64 px vs the toy model's
32 px, refused by ``sdm sample``) and the prepared label maps sit inside
Parquet shards, so after the demo a user has nothing to feed the model. This
module writes the first few label maps of the prepared val split, exactly as
training saw them (class ids ``0..num_classes-1``, the model's size), as:

- ``<out>/labels/NN.png``: single-channel class-id maps (8-bit, 16-bit past 255),
  what ``sdm sample --labels`` reads;
- ``<out>/instances/NN.png``: the matching instance-id maps (datasets with instances),
  what ``sdm sample --instances`` reads;
- ``<out>/request.json``: a request for the served model
  (``curl -d @<out>/request.json http://127.0.0.1:5001/invocations``);
- ``<out>/examples.json``: which dataset id and split each file came from, and the size.

The folder is written whole (a temp folder renamed into place) with sdm's output marker, so a rerun
replaces it, and a folder of the same name that sdm did not make is refused, never replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.atomic import atomic_dir
from sdm.data.loader import PreparedDataset
from sdm.data.shards import encode_png
from sdm.errors import InputError

# The output-folder kind in the marker (sdm.output_folders): what made the folder.
KIND = "demo-examples"
# A request stays small enough to read and to send with curl: one label map per row.
REQUEST_ROWS = 2


@dataclass(frozen=True)
class DemoExamples:
    """Where the examples went (paths as given, relative when ``out`` was relative)."""

    out: Path
    labels: Path
    instances: Path | None
    request: Path
    image_size: tuple[int, int]
    count: int


def write_demo_examples(prepared_dir: str | Path, out: str | Path = "examples", *, split: str = "val",
                        count: int = 4, steps: int | None = None, seed: int = 0) -> DemoExamples:
    """Write ``count`` label maps of ``split`` (id order) of a prepared dataset and a served-model request.

    Args:
        prepared_dir: a folder made by ``sdm data prepare`` (manifest.json + shards).
        out: the folder to (re)write, e.g. ``examples``.
        split: the split to take label maps from (``val``: maps the model was not trained on).
        count: how many label maps (fewer when the split is smaller); ``REQUEST_ROWS`` of them go in the request.
        steps, seed: the request's sampling params (``steps`` omitted: the model's own default).

    Returns:
        A :class:`DemoExamples` with the paths and the maps' ``(H, W)``.

    Raises:
        InputError: ``prepared_dir`` is not a prepared dataset, has no such split, or ``count < 1``.
    """
    if count < 1:
        raise InputError(f"demo examples: count must be >= 1, got {count}")
    out = Path(out)
    dataset = PreparedDataset(prepared_dir, split)
    n = min(count, len(dataset))
    if n == 0:
        raise InputError(f"{prepared_dir}: split {split!r} is empty: no label maps to write as examples")
    width = max(2, len(str(n)))
    records: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    # A marked folder of its own: a rerun replaces it, a user's folder of that name is refused (never merged).
    with atomic_dir(out, kind=KIND, sources=[prepared_dir], source=prepared_dir, flag="demo examples folder") as tmp:
        (tmp / "labels").mkdir()
        if dataset.has_instances:
            (tmp / "instances").mkdir()
        for i in range(n):
            item = dataset[i]
            name = f"{i + 1:0{width}d}.png"
            label = item["label"].numpy()
            (tmp / "labels" / name).write_bytes(encode_png(label))
            row: dict[str, Any] = {"labels": label.tolist()}
            if dataset.has_instances:
                instance = item["instance"].numpy()
                (tmp / "instances" / name).write_bytes(encode_png(instance))
                row["instances"] = instance.tolist()
            if i < REQUEST_ROWS:
                records.append(row)
            index.append({"file": name, "id": item["id"], "split": split})
        params: dict[str, Any] = {"seed": seed}
        if steps is not None:
            params["steps"] = steps
        (tmp / "request.json").write_text(json.dumps({"dataframe_records": records, "params": params}) + "\n")
        (tmp / "examples.json").write_text(json.dumps(
            {"prepared": str(prepared_dir), "image_size": list(dataset.image_size), "examples": index},
            indent=1) + "\n")
    return DemoExamples(out=out, labels=out / "labels",
                        instances=out / "instances" if dataset.has_instances else None,
                        request=out / "request.json", image_size=tuple(dataset.image_size), count=n)
