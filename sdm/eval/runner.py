"""``sdm evaluate``: sample a split with classifier-free guidance and score it.

Writes into ``out`` (built in a temporary sibling directory, swapped into place by ``sdm.atomic``):

- ``metrics.json``: flat numeric keys (``miou@1.5``, ``fsd@1.5``,
  ``feature_diversity@1.5``, ``fid@1.5``, ``kid@1.5``, ``kid_std@1.5``,
  ``seconds_per_image@1.5``, ``steps/dpmpp:25/miou`` ..., ``segmenter_miou_real``,
  the real-vs-real floor ``real_floor/fid``, ``real_floor/kid``,
  ``real_floor/kid_std``: two disjoint halves of the real split),
  ``primary_metric`` (the key the registry ranks by) and ``skipped`` {metric: reason};
- ``evaluation.json``: what was evaluated and how (checkpoint, data version,
  segmenter, feature spaces, warnings, MLflow run);
- ``samples/``, ``grids/`` (coloured label | real | R samples), per-class IoU,
  guidance-sweep and steps-sweep tables (CSV + markdown) and plots (PNG), and
  the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdm.atomic import atomic_dir
from sdm.config import Config, write_resolved
from sdm.eval import report
from sdm.eval.checks import EvaluationInputError, check_compatible, check_split
from sdm.eval.fid import (
    inception_weights_path,
    load_configured_inception,
    missing_weights_reason,
    real_features,
    split_halves,
    too_few_reason,
    weights_source,
)
from sdm.eval.miou import confusion_matrix, mean_iou, per_class_iou
from sdm.eval.scoring import KidSettings, RealReference, inception_scores, lpips_skip_reason, score_samples
from sdm.eval.sweep import format_scale, pair_name, parse_pairs
from sdm.output_folders import EVALUATION, check_output_dir


@dataclass
class EvalRequest:
    """What to evaluate; every other setting comes from ``config.evaluate``.

    ``segmenter``: a segmenter directory or TorchScript file ("" = the config's
    ``evaluate.segmenter.path``, else the cached one for the data, trained when
    missing). ``steps_sweep``: also run the ``evaluate.steps_sweep`` pairs.
    ``overwrite``: replace ``out`` even when it is not an evaluation sdm wrote
    (never the checkpoint's run folder or an input; ``sdm.output_folders``).
    """

    checkpoint: Path
    data: Path
    out: Path
    segmenter: str = ""
    steps_sweep: bool = False
    use_ema: bool = True
    log_mlflow: bool = True
    device: str = "cpu"
    overwrite: bool = False
    # Ray sampling workers (0: evaluate.workers; 1: in this process) and one GPU each (None: evaluate.use_gpu).
    workers: int = 0
    use_gpu: bool | None = None
    # The evaluate keys ("sampler", "steps", "eta") the user set explicitly: a distilled student's own sampler,
    # steps and eta replace the config's others (sdm.distill.student.student_sampling).
    sampling_given: tuple[str, ...] = ()


def primary_scale(config: Config) -> float:
    scales = list(config.evaluate.guidance_scales)
    return config.sample.guidance_scale if config.sample.guidance_scale in scales else scales[0]


def _resolve_segmenter(req: EvalRequest, config: Config, num_classes: int, log: Callable[[str], None]) -> Any:
    from sdm.eval.segmenter_cache import load_segmenter, train_and_save

    path = req.segmenter or config.evaluate.segmenter.path
    seg = load_segmenter(path, num_classes) if path else train_and_save(req.data, config, device=req.device,
                                                                          log=log)[0]
    seg.module.to(req.device)
    return seg


def _generate(model: Any, ckpt_config: Config, real: dict, config: Config, *, scale: float, sampler: str,
              steps: int, pool: Any = None) -> tuple[np.ndarray, float]:
    """R samples per label map: uint8 [R, N, H, W, 3] and seconds per image.

    One ``generate`` call over the label maps tiled R times: sample r*N + i gets
    seed ``evaluate.seed + r*N + i``, so repeats never share noise, and every
    guidance scale / sampler sees the same noise (paired comparisons). With a ``pool``
    (``sdm.eval.ray_sampling.SamplingPool``) Ray workers run the same ``generate`` on slices: same images.
    """
    from sdm.sampling import generate

    r, n = config.evaluate.repeats, len(real["ids"])
    labels = np.concatenate([real["labels"]] * r)
    instances = np.concatenate([real["instances"]] * r) if real["instances"] is not None else None
    start = time.perf_counter()
    kwargs = {"guidance_scale": scale, "sampler": sampler, "steps": steps, "seed": config.evaluate.seed,
              "batch_size": config.evaluate.batch_size, "eta": config.evaluate.eta,
              # Inference speed settings (sample.precision etc.): bf16 only where the quality guard passed.
              "precision": config.sample.precision, "compile": config.sample.compile,
              "channels_last": config.sample.channels_last, "cache_budget_gb": config.sample.cache_budget_gb}
    images = (generate(model, ckpt_config, labels, instances, **kwargs) if pool is None
              else pool.generate(labels, instances, **kwargs))
    seconds = time.perf_counter() - start
    return images.reshape(r, n, *images.shape[1:]), seconds / (r * n)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def run_evaluation(req: EvalRequest, config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``req.checkpoint`` on ``req.data`` (see the module docstring); returns metrics.json's content."""
    from sdm.data.manifest import read_manifest
    from sdm.eval.cache import data_key
    from sdm.eval.segmenter_train import load_split_arrays
    from sdm.model import load_checkpoint, read_checkpoint_meta

    # A refused --out fails before any sampling; atomic_dir checks again just before the swap.
    check_output_dir(req.out, EVALUATION, overwrite=req.overwrite, sources=_inputs(req))
    ev = config.evaluate
    scales = list(ev.guidance_scales)
    if not scales:
        raise EvaluationInputError("no guidance scales to evaluate (evaluate.guidance_scales / --guidance)")
    pairs = parse_pairs(list(ev.steps_sweep)) if req.steps_sweep else []
    if req.steps_sweep and not pairs:
        raise EvaluationInputError("--steps-sweep given but evaluate.steps_sweep is empty")
    manifest = read_manifest(req.data)
    check_split(req.data, ev.split, manifest)
    key, version = data_key(req.data)
    weights = inception_weights_path(config)
    if weights is not None and not weights.is_file():  # a configured-but-missing file fails before any sampling
        load_configured_inception(config, device=req.device)
    model, ckpt_config = load_checkpoint(req.checkpoint, use_ema=req.use_ema, device=req.device)
    config, pairs = _student_settings(config, ckpt_config, pairs, req)
    ev = config.evaluate
    _check_sampling(ckpt_config, config, scales, pairs)
    meta = read_checkpoint_meta(req.checkpoint)
    warnings = check_compatible(req.checkpoint, ckpt_config, req.data, manifest, meta)
    for w in warnings:
        log(f"warning: {w}")

    real = load_split_arrays(req.data, ev.split, ev.num_samples)
    n, reps = len(real["ids"]), ev.repeats
    if n == 0:  # the manifest listed items but the shards hold none
        raise EvaluationInputError(f"split {ev.split!r} of {req.data} has no readable items")
    log(f"evaluating {req.checkpoint} on {n} {ev.split} label maps x {reps} samples; guidance {scales}")
    segmenter = _resolve_segmenter(req, config, manifest.num_classes, log)
    real_pred, real_feats = segmenter.predict(real["images"])
    real_conf = confusion_matrix(real_pred, real["labels"], manifest.num_classes)

    skipped: dict[str, str] = {"lpips": lpips_skip_reason(config)}
    kid = KidSettings(ev.kid_subsets, ev.kid_subset_size, ev.seed)
    inception_skips = _inception_skips(config, n, weights)
    inception, real_inception, feats_cached = None, None, False
    if len(inception_skips) < 2:
        assert weights is not None
        inception = load_configured_inception(config, device=req.device)
        assert inception is not None
        real_inception, feats_cached = real_features(inception, real["images"], data_key=key, split=ev.split,
                                                     ids=real["ids"], weights_path=weights, batch_size=ev.batch_size)
    ref = RealReference(real["images"], real["labels"], real_feats, real_inception, inception_skips)

    metrics: dict[str, Any] = {"segmenter_miou_real": mean_iou(real_conf), "num_images": n, "repeats": reps}
    metrics.update(_real_floor(real_inception, inception_skips, kid, skipped))
    per_class: dict[str, np.ndarray] = {}
    guidance_rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    final = Path(req.out)
    with atomic_dir(final, kind=EVALUATION, overwrite=req.overwrite, sources=_inputs(req),
                    source=Path(req.checkpoint).resolve(), marker={"data": str(Path(req.data).resolve())}) as tmp:
        results: dict[tuple[float, str, int], tuple[dict, dict, np.ndarray, float]] = {}
        pool = _sampling_pool(req, config, log)

        def run(scale: float, sampler: str, steps: int, tag: str) -> tuple[dict, dict, np.ndarray, float]:
            key = (scale, sampler, steps)
            if key not in results:
                log(f"sampling: guidance {format_scale(scale)}, {pair_name(sampler, steps)}")
                samples, spi = _generate(model, ckpt_config, real, config, scale=scale, sampler=sampler, steps=steps,
                                         pool=pool)
                m, sk, pc = score_samples(samples, ref, segmenter, inception, kid=kid, batch_size=ev.batch_size)
                report.save_samples(samples, real["ids"], tmp / "samples" / tag)
                report.save_label_grid(real["labels"], real["images"], samples, manifest.palette,
                                       tmp / "grids" / f"{tag}.png")
                results[key] = (m, sk, pc, spi)
            return results[key]

        try:
            for scale in scales:
                g = format_scale(scale)
                m, sk, pc, spi = run(scale, ev.sampler, ev.steps, f"guidance_{g}")
                per_class[g] = pc
                metrics.update({f"{k}@{g}": v for k, v in m.items()})
                metrics[f"seconds_per_image@{g}"] = spi
                skipped.update({f"{k}@{g}": v for k, v in sk.items()})
                guidance_rows.append({"guidance_scale": g, **m, "seconds_per_image": spi})
            g0 = primary_scale(config)
            for sampler, steps in pairs:
                name = pair_name(sampler, steps)
                m, sk, _, spi = run(g0, sampler, steps, f"steps_{sampler}_{steps}")
                metrics.update({f"steps/{name}/{k}": v for k, v in m.items()})
                metrics[f"steps/{name}/seconds_per_image"] = spi
                skipped.update({f"steps/{name}/{k}": v for k, v in sk.items()})
                sweep_rows.append({"sampler": sampler, "steps": steps, **m, "seconds_per_image": spi})
        finally:
            if pool is not None:
                pool.close()

        primary = _primary_metric(config, metrics, g0)
        metrics = {k: _finite(v) if isinstance(v, float) else v for k, v in metrics.items()}
        nan_keys = [k for k, v in metrics.items() if v is None]
        for k in nan_keys:
            skipped[k] = "undefined (no class present in prediction or target)"
            del metrics[k]
        metrics_doc = {**metrics, "primary_metric": primary, "skipped": skipped}
        _write_tables(tmp, manifest, real_conf, per_class, guidance_rows, sweep_rows, g0)
        info = {
            "checkpoint": str(Path(req.checkpoint).resolve()), "weights": _weights_used(req),
            "checkpoint_meta": meta, "data": str(Path(req.data).resolve()), "data_version": version,
            "split": ev.split, "num_images": n, "repeats": reps, "guidance_scales": scales,
            "sampler": ev.sampler, "steps": ev.steps, "eta": ev.eta, "steps_sweep": [pair_name(*p) for p in pairs],
            "primary_guidance_scale": g0, "segmenter": segmenter.source, "segmenter_info": segmenter.info,
            "fsd_feature_space": segmenter.feature_space,
            "inception": {"weights": str(weights or ""), "source": weights_source(config),
                          "resize": ev.fid_resize, "real_features_from_cache": feats_cached,
                          "kid_subsets": kid.subsets, "skipped": inception_skips},
            "device": req.device, "warnings": warnings,
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics_doc, indent=2) + "\n")
        write_resolved(config, tmp)
        info["mlflow"] = _mlflow_status(req, meta)  # logged below, once the folder is in place
        (tmp / "evaluation.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    log(f"wrote {final}/metrics.json (primary metric {primary} = {metrics.get(primary, 'skipped')})")
    # After the folder is in place: an MLflow outage then costs the logging, never the output.
    _maybe_log_mlflow(req, meta, metrics, final, config, log)
    return metrics_doc


def _student_settings(config: Config, ckpt_config: Config, pairs: list[tuple[str, int]],
                      req: EvalRequest) -> tuple[Config, list[tuple[str, int]]]:
    """A distilled student is evaluated with its own sampler and steps (unless given explicitly), and its steps
    sweep starts with its own pair (``distilled:K``, the row the others are compared with); the configured
    pairs follow, run by the student's single pass with the scale as input. Other checkpoints: unchanged."""
    if not ckpt_config.model.guidance_embed:
        return config, pairs
    from dataclasses import replace

    from sdm.distill.student import student_sampling

    config = replace(config, evaluate=student_sampling(config.evaluate, ckpt_config, set(req.sampling_given)))
    if pairs:
        own = (ckpt_config.evaluate.sampler, ckpt_config.evaluate.steps)
        pairs = [own, *(p for p in pairs if p != own)]
    return config, pairs


def _check_sampling(ckpt_config: Config, config: Config, scales: list[float], pairs: list[tuple[str, int]]) -> None:
    """Before any sampling: every (sampler, scale) this evaluation runs is one the checkpoint can sample
    (``distilled`` only for a student; a student only inside its distill.guidance_range)."""
    from sdm.sampling import check_sampling

    for scale in scales:
        check_sampling(ckpt_config, config.evaluate.sampler, scale)
    for sampler, _ in pairs:
        check_sampling(ckpt_config, sampler, primary_scale(config))


def _sampling_pool(req: EvalRequest, config: Config, log: Callable[[str], None]) -> Any:
    """Ray sampling workers when more than one is asked for (``req.workers``, else ``evaluate.workers``)."""
    workers = req.workers or config.evaluate.workers
    if workers <= 1:
        return None
    from sdm.eval.ray_sampling import SamplingPool

    use_gpu = config.evaluate.use_gpu if req.use_gpu is None else req.use_gpu
    log(f"sampling on {workers} Ray workers" + (" (one GPU each)" if use_gpu else ""))
    return SamplingPool(req.checkpoint, workers=workers, use_ema=req.use_ema, use_gpu=use_gpu)


def _inputs(req: EvalRequest) -> list[Path]:
    """What the output folder must never replace: the checkpoint, the data, a segmenter given by path."""
    return [Path(p) for p in (req.checkpoint, req.data, req.segmenter) if p]


def _weights_used(req: EvalRequest) -> str:
    from sdm.model import EMA_FILE

    return "ema" if req.use_ema and (Path(req.checkpoint) / EMA_FILE).exists() else "model"


def _inception_skips(config: Config, n: int, weights: Path | None) -> dict[str, str]:
    """{"fid" | "kid": reason} for the Inception metrics this evaluation cannot compute (no file, too few images)."""
    ev = config.evaluate
    if weights is None:
        return {"fid": missing_weights_reason(), "kid": missing_weights_reason()}
    skips = {}
    if n < ev.min_fid_samples:
        skips["fid"] = too_few_reason("FID", n, ev.min_fid_samples, "min_fid_samples")
    if n < ev.min_kid_samples:
        skips["kid"] = too_few_reason("KID", n, ev.min_kid_samples, "min_kid_samples")
    return skips


def _real_floor(real: np.ndarray | None, skips: dict[str, str], kid: KidSettings,
                skipped: dict[str, str]) -> dict[str, float]:
    """FID / KID between two disjoint halves of the real features [N, 2048]: the floor a model is read against.

    Each half has N // 2 images, so the floor carries the small-set bias of N / 2 (a little above that of N).
    """
    values: dict[str, float] = {}
    if real is not None:
        a, b = split_halves(len(real), kid.seed)
        values, skips = inception_scores(real[a], real[b], skips, kid)
    if "kid" in skips:
        skips = {**skips, "kid_std": skips["kid"]}
    skipped.update({f"real_floor/{k}": v for k, v in skips.items()})
    return {f"real_floor/{k}": v for k, v in values.items()}


def _primary_metric(config: Config, metrics: dict[str, Any], scale: float) -> str:
    """``register.promotion.metric`` at the primary scale.

    ``auto``: FID when computed (at least ``evaluate.min_fid_samples`` images),
    else KID, else FSD.
    """
    g = format_scale(scale)
    choice = config.register.promotion.metric
    if choice != "auto":
        return choice if "@" in choice or "/" in choice else f"{choice}@{g}"
    return next((f"{k}@{g}" for k in ("fid", "kid") if f"{k}@{g}" in metrics), f"fsd@{g}")


def _write_tables(out: Path, manifest: Any, real_conf: np.ndarray, per_class: dict[str, np.ndarray],
                  guidance_rows: list[dict], sweep_rows: list[dict], g0: float) -> None:
    names = list(manifest.class_names) or [str(c) for c in range(manifest.num_classes)]
    rows, cols = report.per_class_rows(names, per_class_iou(real_conf), per_class)
    report.write_table(rows, cols, out / "per_class_iou", "Per-class IoU (iou_real: the segmenter on real images)")
    cols = ["guidance_scale", *report.METRIC_COLUMNS]
    report.write_table(guidance_rows, cols, out / "guidance_sweep", "Guidance sweep")
    report.plot_sweep([float(r["guidance_scale"]) for r in guidance_rows],
                      {c: [r.get(c) for r in guidance_rows] for c in report.METRIC_COLUMNS},
                      out / "guidance_sweep.png", "guidance scale")
    if sweep_rows:
        base = sweep_rows[0]
        for row in sweep_rows:
            for c in ("miou", "fsd"):
                if row.get(c) is not None and base.get(c):
                    row[f"{c}_vs_{base['sampler']}:{base['steps']}"] = row[c] / base[c]
        extra = [k for k in sweep_rows[0] if k.endswith(f"_vs_{base['sampler']}:{base['steps']}")]
        report.write_table(sweep_rows, ["sampler", "steps", *report.METRIC_COLUMNS, *extra], out / "steps_sweep",
                           f"Steps sweep at guidance {format_scale(g0)}")


def _mlflow_status(req: EvalRequest, meta: dict) -> dict[str, Any]:
    """evaluation.json's ``mlflow`` before logging: why it is not logged, or pending."""
    from sdm.eval.mlflow_log import PENDING

    run_id = meta.get("mlflow_run_id")
    if not req.log_mlflow:
        return {"logged": False, "reason": "--no-mlflow"}
    if not run_id:
        return {"logged": False, "reason": "the checkpoint's meta.json has no mlflow_run_id"}
    return {"logged": False, "run_id": run_id, "reason": PENDING}


def _maybe_log_mlflow(req: EvalRequest, meta: dict, metrics: dict, out: Path, config: Config,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Log the written folder ``out`` (see ``sdm.eval.mlflow_log.log_evaluation``; it raises, keeping ``out``)."""
    from sdm.eval.mlflow_log import PENDING, log_evaluation

    status = _mlflow_status(req, meta)
    if status["reason"] != PENDING:
        return status
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return log_evaluation(str(status["run_id"]), numeric, out, config, log)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
