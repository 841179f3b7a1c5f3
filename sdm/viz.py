"""Label-map colouring and image grids (uint8 HxWx3 numpy arrays)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sdm.data.palette import distinct_palette


def default_palette(num_classes: int) -> list[list[int]]:
    """A fixed, distinct colour per class: [[r, g, b], ...] (num_classes entries, 0..255).

    The same colours as the data tools use for formats without an official
    palette (``sdm.data.palette.distinct_palette``), so grids match the data.
    """
    return distinct_palette(num_classes)


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """label [H, W] integer class indices -> uint8 [H, W, 3] via ``palette`` (default: ``default_palette``)."""
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"colorize expects an integer label map [H, W], got {label.dtype} {label.shape}")
    top = int(label.max()) if label.size else 0
    if palette is None:
        palette = default_palette(top + 1)
    table = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if label.size and (top >= len(table) or int(label.min()) < 0):
        raise ValueError(f"label values span {int(label.min())}..{top} but the palette has {len(table)} colours")
    return table[label]


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, gap: int = 2) -> Path:
    """Save rows of uint8 [H, W, 3] images as one PNG grid (white gaps), atomically (temp file + rename).

    Cells may differ in size; each is placed top-left in a cell of the largest size.
    """
    cells = [np.asarray(c) for row in rows for c in row]
    if not cells:
        raise ValueError("save_grid needs at least one image")
    for c in cells:
        if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
            raise ValueError(f"save_grid expects uint8 [H, W, 3] images, got {c.dtype} {c.shape}")
    cell_h = max(c.shape[0] for c in cells)
    cell_w = max(c.shape[1] for c in cells)
    n_cols = max(len(row) for row in rows)
    height = len(rows) * cell_h + (len(rows) + 1) * gap
    width = n_cols * cell_w + (n_cols + 1) * gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
            canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    return save_png(canvas, path)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H, W, 3] (or [H, W]) array as PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name opened with "x" (not mkstemp, whose files are 0600): the PNG gets the user's umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
