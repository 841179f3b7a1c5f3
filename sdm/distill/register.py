"""A distilled student becomes a registered model version: evaluated with its own sampler, then registered
as a version of its own model name (``distill.model_name``, default ``<register.model_name>-distilled``)
with lineage tags to its teacher.

``sdm.registry.register_checkpoint`` does the registering (idempotent, one version per checkpoint, promotion
by ``register.promotion`` among the student's own versions); this module only supplies what differs for a
student: the evaluation and registration settings from the student's checkpoint (sampler ``renoise``, K
steps, guidance scales inside its range, the serving samplers) and the ``lineage.teacher_*`` tags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdm.config import Config
from sdm.errors import InputError

EVALUATION_DIR = "evaluation"
TEACHER_TAGS = ("teacher_uri", "teacher_version", "teacher_checkpoint_sha256")


def student_settings(config: Config, student: Config) -> Config:
    """The command's config with the student's sampling, evaluation and serving settings (from its checkpoint):
    what its evaluation and registration run with. Guidance scales outside the student's range are dropped."""
    lo, hi = (float(w) for w in student.distill.guidance_range)
    scales = [s for s in config.evaluate.guidance_scales if lo <= s <= hi] or [student.sample.guidance_scale]
    evaluate = dataclasses.replace(config.evaluate, sampler=student.evaluate.sampler, steps=student.evaluate.steps,
                                   guidance_scales=scales)
    register = dataclasses.replace(config.register, serving=student.register.serving)
    return dataclasses.replace(config, sample=student.sample, evaluate=evaluate, register=register)


def teacher_lineage(meta: dict[str, Any], checkpoint: Path) -> dict[str, str]:
    """``lineage.teacher_uri`` / ``lineage.teacher_version`` / ``lineage.teacher_checkpoint_sha256`` from the
    student's meta.json (written by ``sdm distill``)."""
    info = meta.get("distill")
    if not isinstance(info, dict) or any(not info.get(k) for k in TEACHER_TAGS):
        raise InputError(f"{checkpoint / 'meta.json'}: no distill.teacher_uri / teacher_version / "
                         "teacher_checkpoint_sha256: not a student `sdm distill` exported")
    return {f"lineage.{k}": str(info[k]) for k in TEACHER_TAGS}


def register_student(final: str | Path, config: Config, *, name: str, log_mlflow: bool = True,
                     device: str = "cpu", data: str | Path | None = None, promote: bool | None = None,
                     log: Callable[[str], Any] = print) -> Any:
    """Evaluate the student ``final`` on ``data`` (default ``data.prepared``) into ``<final>/../evaluation``,
    then register it as a version of ``name``; returns the ``RegisterResult``.

    ``config`` is the distilling command's; the student's own settings come from its checkpoint
    (:func:`student_settings`). ``promote``: as ``register.promote`` (the student's own champion alias).
    """
    from sdm.eval.runner import EvalRequest, run_evaluation
    from sdm.model import read_checkpoint_config, read_checkpoint_meta
    from sdm.registry.register import register_checkpoint

    final = Path(final).resolve()
    student = read_checkpoint_config(final)
    tags = teacher_lineage(read_checkpoint_meta(final), final)
    settings = student_settings(config, student)
    out = final.parent / EVALUATION_DIR
    request = EvalRequest(checkpoint=final, data=Path(data or settings.data.prepared), out=out,
                          log_mlflow=log_mlflow, device=device, overwrite=False)
    if _evaluated(out, final):
        log(f"[distill] {out}: the student's evaluation is there already")
    else:
        run_evaluation(request, settings, log=log)
    result = register_checkpoint(final, out / "metrics.json", settings, name=name, promote=promote,
                                 extra_tags=tags)
    log(f"[distill] registered {result.name} version {result.version} ({result.model_uri}); "
        f"teacher {tags['lineage.teacher_uri']}")
    return result


def _evaluated(out: Path, final: Path) -> bool:
    """``out`` holds a finished evaluation of ``final`` (a retried registration does not sample again: the
    student's final/ is written once per run)."""
    import json

    try:
        info = json.loads((out / "evaluation.json").read_text())
    except (OSError, ValueError):
        return False
    return (out / "metrics.json").is_file() and info.get("checkpoint") == str(final)
