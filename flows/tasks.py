"""The pipeline's Prefect tasks: each a thin call into ``sdm``, with its retry and cache policy.

- ``prepare_data`` / ``push_data``: DVC decides whether the data is out of date; the prepared data is pushed
  to the remote (retried: a remote may hiccup).
- ``decide``: up to date / resume / continue / scratch (``sdm.registry.retrain_plan``), retried on outages.
- ``train_model``: Ray training under the plan's run name (derived from the fingerprint), so a retried or
  rerun flow on the same data, params and code resumes the same training run.
- ``evaluate_checkpoint``: cached on the checkpoint's content: an unchanged checkpoint is not evaluated twice.
- ``evaluate_champion`` / ``compare_models``: the champion evaluated on the challenger's data and settings
  (cached per checkpoint, data content, settings and code), and the side-by-side grid.
- ``register_model``: log the model version into its training run, tag lineage and both models' figures,
  alias, promote by the ``register.promotion`` rule (retried on network errors; idempotent: a retry finishes
  the checkpoint's one version, ``sdm.registry.idempotent``).

Only failures that may succeed on a second try are retried (``transient_only``, :mod:`sdm.retry_policy`):
network outages and timeouts; bad input, a full disk, a permission error or a NaN loss stay as they are.
Every DVC command has a time limit (``data.dvc_timeout_s``; ``data.dvc_repro_timeout_s`` for repro).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from sdm.config import Config, ConfigError
from sdm.data.version import (
    DataVersionError,
    DvcTimeoutError,
    data_version_info,
    find_dvc_root,
    run_dvc,
    stage_names,
    stage_out,
)
from sdm.registry.retrain_plan import RetrainPlan
from sdm.retry_policy import retry_condition


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` of every retried task: retry only network and timeout failures.

    :mod:`sdm.retry_policy` decides (a full disk, a permission error, bad input, a NaN loss are never
    retried: they would fail the same way again) and logs why.
    """
    return retry_condition(task, task_run, state)


# params.yaml keys the DVC prepare stages track: a --set on them would train on
# data DVC never versioned, so the pipeline refuses it.
DVC_TRACKED_DATA_KEYS = ("format", "source", "prepared", "image_size", "val_fraction", "split_seed",
                         "on_error", "shard_mb", "synth")


def check_overrides(overrides: list[str]) -> None:
    """Refuse ``--set data.<key>`` for keys DVC versions (they belong in params.yaml)."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        parts = key.split(".")
        if parts[0] == "data" and len(parts) > 1 and parts[1] in DVC_TRACKED_DATA_KEYS:
            raise ConfigError(f"--set {key}: the pipeline's data is versioned by DVC from params.yaml; "
                              "edit params.yaml (and commit it) instead of overriding it")


def stage_for(config: Config) -> str:
    """The DVC stage that prepares ``config``'s dataset: ``prepare-<preset>`` when it exists, else ``prepare``."""
    return f"prepare-{config.preset}" if config.preset and config.preset != "toy" else "prepare"


def project_root() -> Path:
    """The DVC project around the working directory (ConfigError outside one)."""
    root = find_dvc_root(Path.cwd())
    if root is None:
        raise ConfigError(f"{Path.cwd()} is not inside a DVC project (no .dvc folder): run the pipeline from "
                          "the sdm checkout, or `dvc init` a project with the sdm dvc.yaml")
    return root


def _stage_up_to_date(stage: str, root: Path, timeout_s: float) -> bool:
    """DVC's own decision: is ``stage`` (and what it depends on) unchanged since the last repro?

    A ``dvc status`` past ``timeout_s`` is killed and raises :class:`sdm.data.version.DvcTimeoutError`.
    """
    if not (root / "dvc.lock").exists():
        return False
    # --with-deps: the stages upstream count too (a changed data.synth re-synthesises the raw data, which the
    # prepare stage alone would not report).
    try:
        out = run_dvc(["status", "--with-deps", "--json", stage], root, timeout_s=timeout_s, echo=False)
    except DvcTimeoutError:
        raise  # a hung DVC is an outage to report (and retry), not "changed"
    except DataVersionError:
        return False  # DVC cannot tell: repro decides
    try:
        # The JSON is the last line (DVC may print warnings before it).
        return json.loads(out.strip().splitlines()[-1] if out.strip() else "{}") == {}
    except json.JSONDecodeError:
        return False


@task(name="prepare-data")
def prepare_data(config: Config) -> dict[str, Any]:
    """``dvc repro`` the dataset's prepare stage unless DVC says it is up to date."""
    logger = get_run_logger()
    root = project_root()
    stage = stage_for(config)
    if stage not in stage_names(root):
        raise ConfigError(f"{root / 'dvc.yaml'} has no stage {stage!r}; data/README.md shows how to add one")
    unchanged = _stage_up_to_date(stage, root, config.data.dvc_timeout_s) and stage_out(root, stage).exists()
    if unchanged:
        logger.info("data unchanged (dvc status %s is clean): preparation skipped", stage)
    else:
        logger.info("dvc repro %s", stage)
        run_dvc(["repro", stage], root, timeout_s=config.data.dvc_repro_timeout_s)
    info = data_version_info(stage_out(root, stage))
    info["cached"] = unchanged
    info["prepared"] = str(stage_out(root, stage))
    logger.info("data version %s", info["version"])
    return info


# A push talks to a remote (S3, SSH, ...): network failures and timeouts are retried.
@task(name="push-data", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=transient_only)
def push_data(config: Config) -> None:
    """``dvc push`` the prepared data, killed past ``data.dvc_timeout_s``."""
    root = project_root()
    run_dvc(["push", "--with-deps", stage_for(config)], root, timeout_s=config.data.dvc_timeout_s)


# Reads the registry (MLflow may hiccup: retried) and may download the champion's checkpoint.
@task(name="decide", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def decide(config: Config, data_version: str, force: bool = False) -> RetrainPlan:
    """Up to date, resume, continue or scratch: ``sdm.registry.retrain_plan.plan_retrain``."""
    from sdm.registry.retrain_plan import plan_retrain

    plan = plan_retrain(config, data_version, force=force)
    get_run_logger().info("decision: %s (%s); run %s", plan.action, plan.reason, plan.run_name or "-")
    return plan


@task(name="train")
def train_model(config: Config, run_name: str, workers: int | None = None,
                init_from: str | None = None, init_label: str | None = None) -> dict[str, Any]:
    """Train (or resume) ``run_name``; ``init_from`` a checkpoint directory whose weights + EMA start it,
    ``init_label`` where that came from (``models:/NAME/VERSION``, recorded in the final meta.json)."""
    # Imported at call time: importing the flows (e.g. for `sdm pipeline --help`) stays cheap.
    from sdm.train import train

    logger = get_run_logger()
    result = train(config, run_name=run_name, workers=workers, init_from=init_from, init_label=init_label,
                   echo=logger.info)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.final_dir), "step": result.global_step,
            "mlflow_run_id": result.mlflow_run_id}


def evaluation_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The evaluation's cache key: ``sdm.registry.champion.evaluation_key`` (checkpoint content, data content,
    evaluation settings, code; the champion's evaluation uses the same) + the output folder and whether it
    still holds the metrics (a deleted folder is evaluated again, not "cached" into a missing file)."""
    from sdm.registry.champion import evaluation_key

    out = Path(parameters["out"]).resolve()
    parts = [evaluation_key(parameters["checkpoint"], parameters["data_version"], parameters["config"]),
             str(out), str((out / "metrics.json").is_file())]
    return "evaluate-" + hashlib.sha256("|".join(parts).encode()).hexdigest()


@task(name="evaluate", cache_key_fn=evaluation_cache_key, persist_result=True)
def evaluate_checkpoint(config: Config, checkpoint: str, data: str, data_version: str, out: str) -> dict[str, Any]:
    from sdm.eval.ray_sampling import cluster_sampling
    from sdm.eval.runner import EvalRequest, run_evaluation

    logger = get_run_logger()
    # On a cluster (RAY_ADDRESS) the sampling is spread like training; the images are the same either way.
    workers, use_gpu = cluster_sampling(config.evaluate.workers, config.evaluate.use_gpu, config.train.workers,
                                        config.train.use_gpu)
    req = EvalRequest(checkpoint=Path(checkpoint), data=Path(data), out=Path(out), workers=workers,
                      use_gpu=use_gpu)
    return run_evaluation(req, config, log=logger.info)


# Reads the registry (retried on outages); its own file cache makes a rerun on the same data free.
@task(name="evaluate-champion", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def evaluate_champion(config: Config, data: str, data_version: str) -> dict[str, Any] | None:
    """The champion evaluated with the challenger's data and settings (``sdm.registry.champion``); None without one."""
    from sdm.registry.champion import evaluate_champion as run

    logger = get_run_logger()
    result = run(config, data, data_version, log=logger.info)
    return None if result is None else result.as_dict()


@task(name="compare")
def compare_models(config: Config, data: str, challenger_eval: str, champion: dict[str, Any] | None,
                   out: str) -> str | None:
    """The side-by-side grid (label map | real | champion | challenger) at ``out``; None without a champion to show."""
    from sdm.registry.comparison import comparison_grid

    if not champion or not champion.get("eval_dir"):
        return None
    return str(comparison_grid(config, data, challenger_eval, champion["eval_dir"], out))


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def register_model(config: Config, checkpoint: str, metrics_file: str, promote: bool,
                   extra_tags: dict[str, str] | None = None, champion: dict[str, Any] | None = None,
                   comparison_grid: str | None = None) -> dict[str, Any]:
    # Looked up at call time (not bound at import), so the pipeline test can inject a transient failure.
    from sdm.registry.register import register_checkpoint

    logger = get_run_logger()
    result = register_checkpoint(checkpoint, metrics_file, config, promote=promote, extra_tags=extra_tags,
                                 champion=champion, comparison_grid=comparison_grid)
    promotion = result.promotion
    decision = promotion.decision if promotion else "not asked"
    logger.info("registered %s version %s (aliases %s; promotion: %s)%s", result.name, result.version,
                result.aliases, decision,
                " - registered before: the same version, as recorded then" if result.already_registered else "")
    return {"name": result.name, "version": result.version, "model_uri": result.model_uri,
            "run_id": result.run_id, "in_training_run": result.in_training_run,
            "aliases": sorted(a for a, v in result.aliases.items() if str(v) == str(result.version)),
            "decision": decision, "reason": getattr(promotion, "reason", ""),
            "metric": getattr(promotion, "metric", ""), "basis": getattr(promotion, "basis", ""),
            "champion_version": getattr(promotion, "champion_version", None), "comparison": result.comparison}


def distill_wanted(config: Config, registration: dict[str, Any]) -> bool:
    """The retrain flow distils the new version only when ``distill.in_retrain`` is on (off in the demo) and
    the registration promoted it: a student of every challenger would cost a distillation per nightly run."""
    from sdm.registry.promotion import PROMOTED

    return bool(config.distill.in_retrain) and registration.get("decision") == PROMOTED


@task(name="distill")
def distill_model(config: Config, teacher_uri: str, workers: int | None = None) -> dict[str, Any]:
    """Distil the promoted version ``teacher_uri`` (``models:/NAME/VERSION``) into a few-step student and register
    it as a version of ``distill.model_name`` (``sdm.distill.run``). The run folder is named after the teacher
    version, so a retried or rerun flow resumes the same distillation."""
    from sdm.distill.run import distill

    logger = get_run_logger()
    name, _, version = teacher_uri.removeprefix("models:/").partition("/")
    result = distill(config, teacher=teacher_uri, run_name=f"{name}-v{version}-distill-{config.distill.steps}",
                     workers=workers, register=True, echo=logger.info)
    reg = result.registered
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.final_dir), "teacher": result.teacher_uri,
            "wall_time_s": result.wall_time_s, "name": reg.name if reg else "", "version": reg.version if reg else "",
            "model_uri": reg.model_uri if reg else ""}
