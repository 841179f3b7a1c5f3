"""``retrain``: the whole pipeline, the flow the schedules run, and its summary artifact.

data (DVC decides whether to prepare; push) -> decide (up to date: stop here;
resume / continue from the champion / scratch: ``sdm.registry.retrain_plan``) -> train on Ray
-> evaluate with classifier-free guidance (cached per checkpoint)
-> evaluate the champion on the same data and settings (cached per data version) -> register in
MLflow (+ promote by ``register.promotion``) -> markdown artifacts: the summary (metrics, decision,
sample grid) and the comparison (both models' figures, the side-by-side grid).

``serve`` runs it on the schedule that prefect.yaml's ``retrain-nightly``
deployment declares, so ``sdm pipeline serve`` and ``prefect deploy`` run the same thing.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.tasks import (
    check_overrides,
    compare_models,
    decide,
    distill_model,
    distill_wanted,
    evaluate_champion,
    evaluate_checkpoint,
    prepare_data,
    push_data,
    register_model,
    train_model,
)
from sdm.config import resolve
from sdm.errors import InputError
from sdm.registry.rule import check_promotion_rule
from sdm.tracking import tracking_uri

DEPLOYMENT = "retrain-nightly"
# The pipeline's lock file, in the project folder (beside params.yaml).
PIPELINE_LOCK = ".retrain.sdm-lock"


def _grid(eval_dir: Path) -> Path | None:
    grids = sorted((eval_dir / "grids").glob("*.png"))
    return grids[-1] if grids else None


def _one_run_per_project(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``fn`` (the retrain flow's body) holding the project's pipeline lock (``sdm.locks``): a second retrain of
    one project (a manual run during a scheduled one) fails at once naming the first, instead of both preparing
    the same data and training the same run. The project is the folder of ``params_file``."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from sdm.locks import hold_lock

        params_file = inspect.signature(fn).bind(*args, **kwargs).arguments.get("params_file", "params.yaml")
        root = Path(params_file).resolve().parent
        with hold_lock(root / PIPELINE_LOCK, f"the retrain pipeline of {root}"):
            return fn(*args, **kwargs)

    return locked


# No flow-level retry: Prefect 3.9.1's @flow has no retry_condition_fn, so `retries=` would rerun the whole flow
# after ANY failure (bad input, a full disk, a NaN loss). Each step that talks to a remote retries itself on
# network errors and timeouts only (flows.tasks.transient_only), and a rerun resumes training.
@flow(name="retrain", log_prints=True)
@_one_run_per_project
def retrain(
    preset: str | None = None,
    overrides: list[str] | None = None,
    promote: bool = True,
    push: bool = True,
    workers: int | None = None,
    params_file: str = "params.yaml",
    force: bool = False,
) -> dict[str, Any]:
    """Run the pipeline from the project root (where params.yaml and dvc.yaml are); returns a summary dict."""
    logger = get_run_logger()
    overrides = list(overrides or [])
    check_overrides(overrides)
    config = resolve(preset=preset, overrides=overrides, params=params_file)
    # A promotion rule naming a metric evaluation does not produce fails now, not after the training.
    check_promotion_rule(config)

    data = prepare_data(config)
    if push:
        push_data(config)
    # Train on exactly the data DVC prepared (the stage's recorded output).
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, prepared=data["prepared"]))

    plan = decide(config, data["version"], force)
    if not plan.trains:
        result = {"run_name": "", "data_version": data["version"], "data_cached": data["cached"],
                  "prepared": data["prepared"], "plan": plan.to_dict(), "tracking_uri": tracking_uri(config)}
        create_markdown_artifact(retrain_summary(result), key="retrain-summary", description="sdm retrain: up to date")
        logger.info("%s", plan.reason)
        return result
    run_name = plan.run_name
    trained = train_model(plan.train_config(config), run_name, workers, plan.init_from, plan.init_uri)
    eval_dir = Path(trained["run_dir"]) / "evaluation"
    metrics = evaluate_checkpoint(config, trained["checkpoint"], data["prepared"], data["version"], str(eval_dir))
    # Champion and challenger on equal terms: the champion evaluated on this data with these settings.
    champion = evaluate_champion(config, data["prepared"], data["version"])
    comparison_grid = compare_models(config, data["prepared"], str(eval_dir), champion,
                                     str(Path(trained["run_dir"]) / "comparison" / "grid.png"))
    registration = register_model(config, trained["checkpoint"], str(eval_dir / "metrics.json"), promote,
                                  plan.lineage_tags(), champion, comparison_grid)
    # Optional (distill.in_retrain, off in the demo): a few-step student of the newly promoted champion.
    distilled = (distill_model(config, f"models:/{registration['name']}/{registration['version']}", workers)
                 if distill_wanted(config, registration) else None)

    result = {
        "run_name": run_name,
        "plan": plan.to_dict(),
        "data_version": data["version"],
        "data_cached": data["cached"],
        "prepared": data["prepared"],
        "checkpoint": trained["checkpoint"],
        "evaluation": str(eval_dir),
        "grid": str(_grid(eval_dir) or ""),
        "metrics": metrics,
        "registration": registration,
        "champion": champion,
        "comparison_grid": comparison_grid or "",
        "tracking_uri": tracking_uri(config),
    }
    if distilled is not None:
        result["distilled"] = distilled
    summary = retrain_summary(result)
    grid = _grid(eval_dir)
    side_by_side = ("\n\n" + COMPARISON_COLUMNS + "\n\n" + image_markdown(comparison_grid, "champion vs challenger")
                    if comparison_grid else "")
    create_markdown_artifact(comparison_section(result) + side_by_side, key="retrain-comparison",
                             description=f"sdm retrain {run_name}: champion vs challenger")
    create_markdown_artifact(summary + side_by_side + ("\n\n## Samples\n\n" + image_markdown(grid) if grid else ""),
                             key="retrain-summary", description=f"sdm retrain {run_name}")
    logger.info("registered %s version %s; promotion: %s", registration["name"], registration["version"],
                registration["decision"])
    return result


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
    plan = result.get("plan") or {}
    decision = [f"- **decision**: {plan['action']}: {plan['reason']}"] if plan else []
    if plan and plan.get("action") == "up-to-date":
        return "\n".join(["# sdm retrain: up to date", "", *decision,
                          f"- **data version**: `{result.get('data_version', '?')}`",
                          f"- **fingerprint**: `{plan['fingerprint']['combined'][:12]}`",
                          f"- **tracking URI**: `{result.get('tracking_uri', '?')}`"])
    if plan.get("init_uri"):
        decision.append(f"- **initialised from**: `{plan['init_uri']}`")
    lines = [
        f"# sdm retrain: {result.get('run_name', '?')}",
        "",
        *decision,
        f"- **data version**: `{result.get('data_version', '?')}`"
        + (" (unchanged: preparation skipped)" if result.get("data_cached") else ""),
        f"- **checkpoint**: `{result.get('checkpoint', '?')}`",
        f"- **model**: `models:/{reg.get('name', '?')}/{reg.get('version', '?')}`"
        f" aliases: {', '.join(reg.get('aliases', [])) or '-'}",
        f"- **promotion**: {reg.get('decision', '-')}" + (f": {reg['reason']}" if reg.get("reason") else ""),
        *([f"- **distilled student** (distill.in_retrain): `{result['distilled']['model_uri']}` from "
           f"`{result['distilled']['teacher']}`"] if result.get("distilled") else []),
        f"- **tracking URI**: `{result.get('tracking_uri', '?')}`",
        "",
        "## Metrics",
        "",
        metrics_table(result.get("metrics", {})),
    ]
    if reg:
        lines += ["", comparison_section(result)]
    return "\n".join(lines)


COMPARISON_COLUMNS = "Side by side, one row per label map: label map | real | champion | challenger."


def comparison_section(result: dict[str, Any]) -> str:
    """Markdown: champion vs challenger on equal terms (both models' figures) and the promotion decision."""
    reg = result.get("registration") or {}
    champion = result.get("champion") or {}
    lines = ["## Champion vs challenger", "", f"**{reg.get('decision', '-')}**: {reg.get('reason', '')}", ""]
    if champion.get("unusable"):
        lines.append(f"Champion v{champion.get('version')} could not be evaluated on this data.")
    elif champion:
        cached = " (its evaluation on this data was cached)" if champion.get("cached") else ""
        lines.append(f"Both models evaluated on data `{champion.get('data_version')}` with the same label maps, "
                     f"seeds, sampler and evaluator{cached}.")
    else:
        lines.append("No champion yet: nothing to compare with.")
    if reg.get("comparison"):
        lines += ["", reg["comparison"]]
    return "\n".join(lines)


def deployment_spec(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> dict[str, Any]:
    """The named deployment of prefect.yaml (schedules, parameters): one source for serve and deploy."""
    path = Path(prefect_yaml)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prefect.yaml here; run from the sdm checkout")
    data = yaml.safe_load(path.read_text()) or {}
    for dep in data.get("deployments") or []:
        if dep.get("name") == name:
            return dep
    raise InputError(f"{path}: no deployment named {name!r}")


def require_server() -> str:
    """The configured Prefect API URL, checked to answer; InputError at once when there is none.

    Without a server Prefect falls back to an ephemeral API that has no scheduler: ``serve``
    would then wait forever for runs that never come.
    """
    import urllib.error
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    hint = ("start one (`prefect server start`) and point at it: "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (README: Scheduled retraining)")
    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(f"serving a schedule needs a Prefect server, and PREFECT_API_URL is not set: {hint}")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (e.g. 401 without a Cloud API key): reachable; Prefect reports the rest
    except (OSError, ValueError) as e:
        raise InputError(f"PREFECT_API_URL={url}: no Prefect server answers ({e}); {hint}") from None
    return url


def schedules_of(spec: dict[str, Any]) -> list[Any]:
    """The active schedules of a prefect.yaml deployment: ``cron`` (+ ``timezone``) or ``interval`` (seconds)."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    out: list[Any] = []
    for s in spec.get("schedules") or []:
        if not s.get("active", True):
            continue
        if "cron" in s:
            out.append(CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")))
        elif "interval" in s:
            out.append(IntervalSchedule(interval=float(s["interval"])))
        else:
            raise InputError(f"deployment {spec.get('name')!r}: schedule {s!r} has neither cron nor interval")
    return out


def serve(prefect_yaml: str | Path = "prefect.yaml", name: str = DEPLOYMENT) -> None:
    """Block, running ``retrain`` whenever its schedule fires (needs a Prefect server: PREFECT_API_URL).

    One run at a time (``limit=1``): a run that outlasts the interval delays the next,
    never races it over the same data and run folders.
    """
    spec = deployment_spec(prefect_yaml, name)
    schedules = schedules_of(spec)
    require_server()
    retrain.serve(name=name, schedules=schedules, parameters=spec.get("parameters") or {},
                  description=spec.get("description"), limit=1)
