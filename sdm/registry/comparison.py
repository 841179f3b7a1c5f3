"""See the difference: champion and challenger side by side, as a grid and as a metrics table.

The grid has one row per label map: coloured label map | real image | champion
| challenger, from the two evaluations' first sample of each label map at the
primary guidance scale (the same label maps and seeds: both evaluations ran
with the same settings). The table has a row per figure, metric | challenger |
champion | change, the compared metric first and in bold. Both go into the new
version's MLflow run (``comparison/``), the version's description and the
``retrain`` summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sdm.config import Config
from sdm.eval.report import METRIC_COLUMNS
from sdm.eval.sweep import format_scale
from sdm.registry.promotion import relative_gain

GRID_NAME = "grid.png"
TABLE_NAME = "comparison.md"
COLUMNS = "label map | real | champion | challenger"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table_keys(primary: str, guards: Mapping[str, float], *figures: Mapping[str, float]) -> list[str]:
    """The rows: the compared metric, the guards, then the other headline metrics at the primary's scale."""
    scale = primary.split("@", 1)[1] if "@" in primary else None
    keys = [primary, *guards]
    if scale is not None:
        keys += [f"{name}@{scale}" for name in METRIC_COLUMNS]
    present = {k for f in figures for k in f}
    return [k for k in dict.fromkeys(keys) if k == primary or k in present]


def comparison_table(challenger: Mapping[str, float], champion: Mapping[str, float] | None, primary: str,
                     guards: Mapping[str, float] | None = None, champion_label: str = "champion") -> str:
    """A markdown table metric | challenger | champion | change (relative, in the metric's better direction)."""
    guards = dict(guards or {})
    champion = dict(champion or {})
    lines = [f"| metric | challenger | {champion_label} | change |", "|---|---|---|---|"]
    for key in table_keys(primary, guards, challenger, champion):
        mine, theirs = challenger.get(key), champion.get(key)
        if mine is None or theirs is None:
            change = "-"
        else:
            gain = relative_gain(key, mine, theirs)
            change = "equal" if gain == 0 else f"{abs(gain):.1%} {'better' if gain > 0 else 'worse'}"
        label = f"**{key}** (compared)" if key == primary else key
        if key in guards:
            label += f" (guard: at most {guards[key]:.0%} worse)"
        lines.append(f"| {label} | {_fmt(mine)} | {_fmt(theirs)} | {change} |")
    return "\n".join(lines)


def _sample(eval_dir: Path, tag: str, item_id: str) -> np.ndarray | None:
    from PIL import Image

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id) or "_"
    path = eval_dir / "samples" / tag / f"{safe}_r0.png"
    if not path.is_file():
        return None
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def comparison_grid(config: Config, data: str | Path, challenger_eval: str | Path, champion_eval: str | Path,
                    out: str | Path, scale: float | None = None, max_rows: int = 8, min_cell: int = 96) -> Path:
    """Write the side-by-side PNG (rows: label map | real | champion | challenger) to ``out``; returns it.

    ``scale``: the guidance scale whose samples to show (default: ``sample.guidance_scale``
    when evaluated, else the first of ``evaluate.guidance_scales``, as evaluation's primary scale).
    """
    from sdm.data.manifest import read_manifest
    from sdm.eval.segmenter_train import load_split_arrays
    from sdm.viz import colorize, save_grid

    ev = config.evaluate
    if scale is None:
        scales = list(ev.guidance_scales)
        scale = config.sample.guidance_scale if config.sample.guidance_scale in scales else scales[0]
    tag = f"guidance_{format_scale(scale)}"
    real = load_split_arrays(data, ev.split, ev.num_samples)
    palette = read_manifest(data).palette
    k = max(1, -(-min_cell // max(1, min(real["labels"].shape[1:3]))))
    rows = []
    for i, item_id in enumerate(real["ids"][:max_rows]):
        champ = _sample(Path(champion_eval), tag, item_id)
        mine = _sample(Path(challenger_eval), tag, item_id)
        if champ is None or mine is None:
            continue
        cells = [colorize(real["labels"][i], palette), real["images"][i], champ, mine]
        rows.append([c.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else c for c in cells])
    if not rows:
        raise FileNotFoundError(f"no samples at guidance {format_scale(scale)} in both {challenger_eval} and "
                                f"{champion_eval} (samples/{tag}/<id>_r0.png)")
    return save_grid(rows, out)
