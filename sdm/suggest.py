""""Did you mean": the closest valid name for a misspelt choice, for every enumerated option's error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[object], cutoff: float = 0.5) -> str:
    """``" (did you mean 'dpmpp-sde'?)"`` for the choice closest to ``value``, or ``""`` when none is close.

    E.g. ``did_you_mean("ade20", ["ade20k", "folder"])`` -> ``" (did you mean 'ade20k'?)"``. ``cutoff`` is
    difflib's similarity floor (0..1); 0 always names the closest choice.
    """
    names = [str(c) for c in choices]
    match = difflib.get_close_matches(str(value), names, n=1, cutoff=cutoff)
    return f" (did you mean '{match[0]}'?)" if match else ""
