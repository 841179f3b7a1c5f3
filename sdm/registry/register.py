"""``register_checkpoint``: an evaluated checkpoint becomes a registered, tagged, aliased model version.

Every input is checked before anything is written to MLflow (the checkpoint
loads, the metrics hold a usable primary metric, the promotion rule names
metrics evaluation produces, the aliases are valid), so a bad input leaves no
half-made run or version behind.

The model is logged into the checkpoint's TRAINING run (meta.json's
``mlflow_run_id``) when that run is in this store, so the version's source run
is the run that made it, with its curves, samples and evaluation; only a
checkpoint from elsewhere gets a new ``register-<name>`` run.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sdm.config import Config, to_dict
from sdm.errors import InputError
from sdm.registry.champion import ChampionEvaluation
from sdm.registry.comparison import COLUMNS, GRID_NAME, TABLE_NAME, comparison_table
from sdm.registry.lineage import lineage_tags
from sdm.registry.metrics import read_metrics, usable_candidates
from sdm.registry.promotion import (
    EQUAL_TERMS,
    PROMOTED,
    ChampionFigures,
    PromotionDecision,
    champion_metric_tag,
    current_champion,
    decide,
    metric_tag,
)
from sdm.registry.rule import check_promotion_rule
from sdm.tracking import configure, ensure_experiment, metric_key

# MLflow's alias rule: letters, digits, '_' and '-', not "latest" and not a version-like "v<digits>".
_ALIAS = re.compile(r"^[\w\-]+$")


class RegisterError(InputError):
    """A registration that cannot go ahead; the message names the input and the problem."""


@dataclass
class RegisterResult:
    """What ``sdm register`` made: the version, where the aliases point, the promotion decision."""

    name: str
    version: str
    run_id: str
    model_uri: str
    aliases: dict[str, str] = field(default_factory=dict)
    promotion: PromotionDecision | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # metric | challenger | champion (markdown), and whether the model went into the training run.
    comparison: str = ""
    in_training_run: bool = False


def _check_alias(alias: str, what: str) -> None:
    if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegisterError(f"{what} {alias!r} is not a valid MLflow alias: use letters, digits, '_' or '-', "
                            "not 'latest' or a version-like 'v3'")


def _description(ckpt: Path, table: str, decision: PromotionDecision, grid: bool) -> str:
    """Short markdown for the registry page: the decision, the metrics table, where the rest is."""
    where = (f"Side by side ({COLUMNS}): run artifact `comparison/{GRID_NAME}`. " if grid else "")
    return (f"**Promotion: {decision.decision}**: {decision.reason}\n\n{table}\n\n"
            f"{where}Checkpoint: `{ckpt}`; every figure is a `metrics.*` tag, lineage in `lineage.*`.")


def _training_run(client: object, meta: dict) -> str | None:
    """meta.json's training run when it is in this store (else None: the checkpoint was trained elsewhere)."""
    from mlflow.exceptions import MlflowException

    run_id = str(meta.get("mlflow_run_id") or "")
    if not run_id:
        return None
    try:
        client.get_run(run_id)  # type: ignore[attr-defined]
    except MlflowException:
        return None
    return run_id


def _champion_figures(client: object, name: str, alias: str,
                      evaluated: ChampionEvaluation | None) -> ChampionFigures | None:
    """The champion's figures: from its evaluation on equal terms when it is still the champion, else its tags."""
    version = current_champion(client, name, alias)  # type: ignore[arg-type]
    if version is None:
        return None
    if evaluated is not None and str(evaluated.version) == str(version.version):
        return evaluated.figures()
    # No evaluation on equal terms (plain `sdm register`), or the alias moved meanwhile.
    return ChampionFigures.from_version(version)


def register_checkpoint(
    checkpoint: str | Path,
    metrics_file: str | Path,
    config: Config,
    *,
    name: str | None = None,
    alias: str | None = None,
    promote: bool | None = None,
    extra_tags: dict[str, str] | None = None,
    champion: ChampionEvaluation | dict | None = None,
    comparison_grid: str | Path | None = None,
) -> RegisterResult:
    """Log ``checkpoint`` as an MLflow pyfunc model version of ``name``, tag its lineage, alias and maybe promote.

    ``config`` is the resolved config of the registering command: its
    ``register`` section gives the defaults for ``name``, ``alias``, ``promote``,
    the champion alias and the promotion rule, and its ``sample`` section the
    primary metric's guidance scale and the model's default sampling params.
    ``extra_tags`` are added to the version's tags (``retrain`` passes its plan's lineage).
    ``champion``: the champion's evaluation on the challenger's terms
    (:func:`sdm.registry.champion.evaluate_champion`); without it the champion's
    recorded tags are compared. ``comparison_grid``: the side-by-side PNG, logged
    under ``comparison/`` of the version's run.
    """
    import mlflow

    from sdm.model import load_checkpoint, read_checkpoint_meta
    from sdm.registry.packaging import pip_requirements, pyfunc_path, stage_checkpoint, stage_code
    from sdm.registry.signature import input_example, model_signature

    reg = config.register
    name = name or reg.model_name
    alias = alias or reg.alias
    promote = reg.promote if promote is None else promote
    champion_alias = reg.champion_alias
    _check_alias(alias, "--alias")
    _check_alias(champion_alias, "register.champion_alias")
    if alias == champion_alias:
        raise RegisterError(f"--alias {alias!r} is the champion alias; promotion moves it (use --promote)")

    ckpt = Path(checkpoint).resolve()
    # Loading validates the weights against config.json before anything is logged.
    _, ckpt_config = load_checkpoint(ckpt, use_ema=True)
    meta = read_checkpoint_meta(ckpt)
    metrics = read_metrics(metrics_file)
    rule = check_promotion_rule(config)
    keys = usable_candidates(metrics, rule.metric, config.sample.guidance_scale)
    if isinstance(champion, dict):
        champion = ChampionEvaluation.from_dict(champion)
    grid = Path(comparison_grid) if comparison_grid else None
    if grid is not None and not grid.is_file():
        raise RegisterError(f"comparison grid {grid}: no such file")
    source = pyfunc_path()
    requirements = pip_requirements()
    ckpt_dict = to_dict(ckpt_config)
    tags = lineage_tags(ckpt, ckpt_dict, meta)
    tags.update({metric_tag(k): repr(v) for k, v in metrics.values.items()})
    tags["lineage.metrics_file"] = str(Path(metrics_file).resolve())
    # The caller's lineage (retrain: the fingerprint, the retrain action, what training started from).
    tags.update(extra_tags or {})

    configure(config)
    client = mlflow.MlflowClient()
    train_run = _training_run(client, meta)
    if train_run is not None:
        status = client.get_run(train_run).info.status
        run_ctx = mlflow.start_run(run_id=train_run)
    else:
        # The experiment named after the model, where `sdm train` logs its runs by default.
        status = None
        run_ctx = mlflow.start_run(experiment_id=ensure_experiment(name, config), run_name=f"register-{name}")
    with tempfile.TemporaryDirectory(prefix="sdm-register-") as tmp, run_ctx as run:
        staged = stage_checkpoint(ckpt, Path(tmp))
        code = stage_code(Path(tmp) / "code")
        mlflow.set_tags(tags)
        # The evaluation may have logged these to the training run already: only what is new or changed.
        logged = client.get_run(run.info.run_id).data.metrics
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.values.items() if logged.get(metric_key(k)) != v})
        mlflow.log_dict(json.loads(Path(metrics_file).read_text()), "evaluation/metrics.json")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(source),
            artifacts={"checkpoint": str(staged)},
            code_paths=[str(code)],
            signature=model_signature(ckpt_config, config.sample),
            input_example=input_example(ckpt_config),
            pip_requirements=requirements,
            registered_model_name=name,
            metadata={k: v for k, v in tags.items() if k.startswith("lineage.")},
        )
        version = str(info.registered_model_version)
        figures = _champion_figures(client, name, champion_alias, champion)
        decision = decide(metrics, keys, figures, rule, promote)
        all_tags = {**tags, **decision.tags(), **_champion_tags(figures, champion)}
        for key, value in all_tags.items():
            client.set_model_version_tag(name, version, key, value)
        champ_values = None if figures is None else {
            k: v for k in [*metrics.values, *figures.values] if (v := figures.get(k)) is not None}
        label = f"champion v{figures.version}" if figures else "champion (none)"
        table = comparison_table(metrics.values, champ_values, decision.metric, rule.guards, label)
        client.update_model_version(name, version, description=_description(ckpt, table, decision, grid is not None))
        mlflow.log_text(f"# v{version}: {decision.decision}\n\n{decision.reason}\n\n{table}\n"
                        + (f"\n{COLUMNS}\n\n![side by side]({GRID_NAME})\n" if grid else ""),
                        f"comparison/{TABLE_NAME}")
        if grid is not None:
            mlflow.log_artifact(str(grid), "comparison")
        client.set_registered_model_alias(name, alias, version)
        if decision.decision == PROMOTED:
            client.set_registered_model_alias(name, champion_alias, version)
        mlflow.set_tags(decision.tags())
    if status is not None and status != "FINISHED":
        # Resuming the training run marked it FINISHED on exit: keep what training said (FAILED, KILLED).
        client.set_terminated(run.info.run_id, status=status)
    aliases = dict(client.get_registered_model(name).aliases)
    return RegisterResult(name=name, version=version, run_id=run.info.run_id, model_uri=f"models:/{name}/{version}",
                          aliases=aliases, promotion=decision, tags=all_tags, comparison=table,
                          in_training_run=train_run is not None)


def _champion_tags(figures: ChampionFigures | None, evaluated: ChampionEvaluation | None) -> dict[str, str]:
    """``champion.*``: the champion's figures on equal terms and where its evaluation is (none when recorded)."""
    if figures is None or figures.basis != EQUAL_TERMS:
        return {}
    tags = {champion_metric_tag(k): repr(v) for k, v in figures.values.items()}
    tags["champion.version"] = figures.version
    tags["champion.data_version"] = figures.data_version or "unknown"
    if evaluated is not None:
        tags["champion.evaluation"] = evaluated.eval_dir or "none"
        tags["champion.evaluation_cached"] = str(evaluated.cached).lower()
        if evaluated.unusable:
            tags["champion.unusable"] = evaluated.unusable[:5000]
    return tags
