"""The markdown summary a `retrain` run leaves as a Prefect artifact (pure: testable without Prefect)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metrics_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the numeric metrics, then the skipped ones with their reasons."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
    skipped = metrics.get("skipped") or {}
    if skipped:
        lines += ["", "Skipped:"] + [f"- **{k}**: {why}" for k, why in sorted(skipped.items())]
    return "\n".join(lines)


def image_markdown(path: str | Path, alt: str = "sample grid", max_bytes: int = 2_000_000) -> str:
    """Embed a PNG inline (data URI) so the Prefect UI shows it without a file server."""
    path = Path(path)
    if not path.exists():
        return f"_(no image at {path})_"
    data = path.read_bytes()
    if len(data) > max_bytes:
        return f"_(grid too large to embed: {path})_"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def retrain_summary(result: dict[str, Any]) -> str:
    """Markdown for one retrain run: data version, metrics, promotion decision, where the model is."""
    reg = result.get("registration", {})
    lines = [
        f"# sdm retrain: {result.get('run_name', '?')}",
        "",
        f"- **data version**: `{result.get('data_version', '?')}`"
        + (" (unchanged: preparation skipped)" if result.get("data_cached") else ""),
        f"- **checkpoint**: `{result.get('checkpoint', '?')}`",
        f"- **model**: `models:/{reg.get('name', '?')}/{reg.get('version', '?')}`"
        f" aliases: {', '.join(reg.get('aliases', [])) or '-'}",
        f"- **promotion**: {reg.get('decision', '-')}",
        f"- **tracking URI**: `{result.get('tracking_uri', '?')}`",
        "",
        "## Metrics",
        "",
        metrics_table(result.get("metrics", {})),
    ]
    return "\n".join(lines)
