"""Evaluation outputs on disk: tables (CSV + markdown), sweep plots, sample grids and PNGs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdm.viz import colorize, save_grid, save_png

METRIC_COLUMNS = ("miou", "fsd", "feature_diversity", "fid", "kid", "kid_std", "seconds_per_image")
LOWER_IS_BETTER = {"fsd": True, "fid": True, "kid": True, "kid_std": True, "miou": False, "feature_diversity": False,
                   "seconds_per_image": True}


def _fmt(value: object) -> str:
    if value is None:
        return "skipped"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_table(rows: Sequence[dict[str, object]], columns: Sequence[str], stem: Path, title: str = "") -> None:
    """``stem``.csv and ``stem``.md with the given columns (None -> 'skipped', NaN -> 'n/a')."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def per_class_rows(
    class_names: Sequence[str], real_iou: np.ndarray, generated: dict[str, np.ndarray]
) -> tuple[list[dict[str, object]], list[str]]:
    """Rows of the per-class IoU table: class id, name, real (the ceiling), then one column per setting."""
    columns = ["class_id", "class_name", "iou_real", *[f"iou@{k}" for k in generated]]
    rows = []
    for c, name in enumerate(class_names):
        row: dict[str, object] = {"class_id": c, "class_name": name, "iou_real": float(real_iou[c])}
        for k, iou in generated.items():
            row[f"iou@{k}"] = float(iou[c])
        rows.append(row)
    return rows, columns


def plot_sweep(xs: Sequence[float], series: dict[str, Sequence[float | None]], path: Path, xlabel: str) -> Path:
    """One panel per metric (its values against ``xs``); skipped metrics are left out. PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in series.items() if any(x is not None and not math.isnan(x) for x in v)}
    n = max(len(shown), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, (name, values) in zip(axes[0], shown.items(), strict=False):
        pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None and not math.isnan(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        better = "lower" if LOWER_IS_BETTER.get(name, False) else "higher"
        ax.set_title(f"{name} ({better} is better)", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def save_samples(samples: np.ndarray, ids: Sequence[str], directory: Path) -> None:
    """samples uint8 [R, N, H, W, 3] -> ``directory/<id>_r<k>.png``."""
    for r in range(samples.shape[0]):
        for i, item_id in enumerate(ids):
            save_png(samples[r, i], directory / f"{_safe(item_id)}_r{r}.png")


def save_label_grid(
    labels: np.ndarray, real: np.ndarray, samples: np.ndarray, palette: Sequence[Sequence[int]] | None,
    path: Path, max_rows: int = 8, min_cell: int = 96,
) -> Path:
    """Rows of: coloured label map | real image | the R samples (first ``max_rows`` label maps).

    Small images are enlarged by an integer factor (nearest) to at least
    ``min_cell`` pixels so that a 32x32 grid is readable.
    """
    k = max(1, -(-min_cell // max(1, min(labels.shape[1:3]))))

    def big(img: np.ndarray) -> np.ndarray:
        return img.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else img

    rows = []
    for i in range(min(max_rows, len(labels))):
        cells = [colorize(labels[i], palette), real[i], *[samples[r, i] for r in range(samples.shape[0])]]
        rows.append([big(c) for c in cells])
    return save_grid(rows, path)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"
