"""Parsing of guidance scales and ``sampler:steps`` pairs, and the metric-key names built from them."""

from __future__ import annotations

from sdm.config.schema import SAMPLER_NAMES as SAMPLERS
from sdm.errors import InputError
from sdm.suggest import did_you_mean


class SweepSpecError(InputError):
    """A guidance list or ``sampler:steps`` pair that cannot be parsed."""


def format_scale(scale: float) -> str:
    """1.0 -> '1.0', 1.5 -> '1.5', 1.25 -> '1.25' (the suffix of ``miou@1.5``)."""
    return f"{scale:.1f}" if float(scale).is_integer() else f"{scale:g}"


def parse_scales(text: str) -> list[float]:
    """'1.0,1.5,2' -> [1.0, 1.5, 2.0] (unique, in the given order; each >= 0)."""
    scales: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SweepSpecError(f"guidance scale {part!r} is not a number (e.g. --guidance 1.0,1.5,2.0)") from None
        if value < 0:
            raise SweepSpecError(f"guidance scale {value} is negative")
        if value not in scales:
            scales.append(value)
    if not scales:
        raise SweepSpecError(f"no guidance scales in {text!r}")
    return scales


def parse_pair(text: str) -> tuple[str, int]:
    """'dpmpp:25' -> ('dpmpp', 25)."""
    sampler, sep, steps = text.strip().partition(":")
    if not sep or sampler not in SAMPLERS or not steps.strip().isdigit() or int(steps) < 1:
        hint = did_you_mean(sampler, SAMPLERS) if sep and sampler not in SAMPLERS else ""
        raise SweepSpecError(
            f"steps-sweep entry {text!r}{hint} is not sampler:steps with sampler in {', '.join(SAMPLERS)} "
            "and steps >= 1 "
            "(e.g. ddpm:1000,ddim:50,dpmpp:25)"
        )
    return sampler, int(steps)


def parse_pairs(items: list[str]) -> list[tuple[str, int]]:
    pairs: list[tuple[str, int]] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                pair = parse_pair(part)
                if pair not in pairs:
                    pairs.append(pair)
    return pairs


def pair_name(sampler: str, steps: int) -> str:
    return f"{sampler}:{steps}"
