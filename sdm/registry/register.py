"""``register_checkpoint``: an evaluated checkpoint becomes a registered, tagged, aliased model version.

Every input is checked before anything is written to MLflow (the checkpoint
loads, the metrics hold a usable primary metric, the promotion rule names
metrics evaluation produces, the aliases are valid), so a bad input leaves no
half-made run or version behind.

The model is logged into the checkpoint's TRAINING run (meta.json's
``mlflow_run_id``) when that run is in this store, so the version's source run
is the run that made it, with its curves, samples and evaluation; only a
checkpoint from elsewhere gets a new ``register-<name>`` run.

Registration is idempotent (:mod:`sdm.registry.idempotent`): a version is keyed
by its checkpoint's weights hash, so registering the same checkpoint again (a
retry after a failure at any step, or a rerun) finishes the version an earlier
attempt left (tags, description, aliases, promotion) instead of making another,
and reports a complete one as it is. Promotion re-reads the champion alias
right before moving it (:func:`_promote`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdm.config import Config, to_dict
from sdm.errors import InputError
from sdm.registry.champion import ChampionEvaluation
from sdm.registry.comparison import COLUMNS, GRID_NAME, TABLE_NAME, comparison_table
from sdm.registry.idempotent import (
    COMPLETE,
    REGISTRATION_TAG,
    RUN_STATUS_TAG,
    claim,
    earlier_register_run,
    is_complete,
    reusable_logged_model,
    usable_versions,
)
from sdm.registry.lineage import CHECKPOINT_SHA256_TAG, checkpoint_sha256, lineage_tags
from sdm.registry.metrics import EvalMetrics, read_metrics, usable_candidates
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
from sdm.registry.rule import PromotionRule, check_promotion_rule
from sdm.tracking import configure, ensure_experiment, metric_key

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

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
    # True when this checkpoint's version was complete before the call: nothing was written but ``alias``
    # (its figures and decision are those recorded then).
    already_registered: bool = False


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
    from sdm.registry.pyfunc_io import serving_model_config
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
    # The served model's request limits (register.serving), checked here before anything is written.
    model_config = serving_model_config(config)
    ckpt_dict = to_dict(ckpt_config)
    tags = lineage_tags(ckpt, ckpt_dict, meta)
    tags.update({metric_tag(k): repr(v) for k, v in metrics.values.items()})
    tags["lineage.metrics_file"] = str(Path(metrics_file).resolve())
    # The caller's lineage (retrain: the fingerprint, the retrain action, what training started from).
    tags.update(extra_tags or {})

    sha256 = checkpoint_sha256(ckpt)
    tags[CHECKPOINT_SHA256_TAG] = sha256

    configure(config)
    client = mlflow.MlflowClient()
    # One version per checkpoint: a retry or a rerun finds what an earlier attempt left and finishes it.
    found = usable_versions(client, name, sha256)
    existing = found[0] if found else None
    train_run = _training_run(client, meta)
    if existing is not None and is_complete(existing):
        return _already_registered(client, name, existing, alias, train_run)
    experiment_id = ensure_experiment(name, config)
    run_id = (existing.run_id if existing is not None and existing.run_id else None) or train_run \
        or earlier_register_run(client, experiment_id, f"register-{name}", sha256)
    restore = _remember_status(client, run_id) if run_id == train_run and run_id else None
    if run_id is not None:
        run_ctx = mlflow.start_run(run_id=run_id)
    else:
        # The experiment named after the model, where `sdm train` logs its runs by default.
        run_ctx = mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}",
                                   tags={CHECKPOINT_SHA256_TAG: sha256})
    with tempfile.TemporaryDirectory(prefix="sdm-register-") as tmp, run_ctx as run:
        mlflow.set_tags(tags)
        # The evaluation may have logged these to the training run already: only what is new or changed.
        logged = client.get_run(run.info.run_id).data.metrics
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.values.items() if logged.get(metric_key(k)) != v})
        mlflow.log_dict(json.loads(Path(metrics_file).read_text()), "evaluation/metrics.json")
        if existing is not None:
            version = str(existing.version)
        else:
            model_id = reusable_logged_model(client, run.info.experiment_id, run.info.run_id, sha256)
            if model_id is None:
                staged = stage_checkpoint(ckpt, Path(tmp))
                code = stage_code(Path(tmp) / "code")
                model_id = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(source),
                    artifacts={"checkpoint": str(staged)},
                    code_paths=[str(code)],
                    signature=model_signature(ckpt_config, config.sample),
                    input_example=input_example(ckpt_config),
                    pip_requirements=requirements,
                    metadata={k: v for k, v in tags.items() if k.startswith("lineage.")},
                    model_config=model_config,
                    # The hash on the logged model: an attempt killed after the upload reuses it.
                    tags={CHECKPOINT_SHA256_TAG: sha256},
                ).model_id
            # The version is created WITH its key, in one call: no version of this checkpoint lacks it.
            created = mlflow.register_model(f"models:/{model_id}", name, tags={CHECKPOINT_SHA256_TAG: sha256})
            version = claim(client, name, sha256, str(created.version))
        recorded = client.get_model_version(name, version).tags or {}
        figures, decision = _decision(client, name, recorded, metrics, keys, rule, promote, champion_alias, champion)
        all_tags = {**tags, **_champion_tags(figures, champion), **decision.tags()}
        _set_version_tags(client, name, version, all_tags, recorded)
        table = _table(metrics, figures, decision, rule)
        client.update_model_version(name, version, description=_description(ckpt, table, decision, grid is not None))
        mlflow.log_text(f"# v{version}: {decision.decision}\n\n{decision.reason}\n\n{table}\n"
                        + (f"\n{COLUMNS}\n\n![side by side]({GRID_NAME})\n" if grid else ""),
                        f"comparison/{TABLE_NAME}")
        if grid is not None:
            mlflow.log_artifact(str(grid), "comparison")
        client.set_registered_model_alias(name, alias, version)
        figures, decision = _promote(client, name, version, champion_alias, decision, figures,
                                     lambda f: decide(metrics, keys, f, rule, promote), champion)
        if decision.tags() != {k: all_tags.get(k) for k in decision.tags()}:
            # The champion moved meanwhile and the decision was taken again: record the one that holds.
            all_tags = {**tags, **_champion_tags(figures, champion), **decision.tags()}
            for key in client.get_model_version(name, version).tags or {}:
                if key.startswith("champion.") and key not in all_tags:  # the figures of the old champion
                    client.delete_model_version_tag(name, version, key)
            _set_version_tags(client, name, version, all_tags, {})
            table = _table(metrics, figures, decision, rule)
            client.update_model_version(name, version,
                                        description=_description(ckpt, table, decision, grid is not None))
        mlflow.set_tags(decision.tags())
        # The last write: from here on the version is complete, and a retry only reports it.
        client.set_model_version_tag(name, version, REGISTRATION_TAG, COMPLETE)
    if restore is not None:
        if restore != "FINISHED":
            # Resuming the training run marked it FINISHED on exit: keep what training said (FAILED, KILLED).
            client.set_terminated(run.info.run_id, status=restore)
        # Only for the length of a registration: a later one reads the run's status afresh.
        client.delete_tag(run.info.run_id, RUN_STATUS_TAG)
    aliases = dict(client.get_registered_model(name).aliases)
    return RegisterResult(name=name, version=version, run_id=run.info.run_id, model_uri=f"models:/{name}/{version}",
                          aliases=aliases, promotion=decision, tags={**all_tags, REGISTRATION_TAG: COMPLETE},
                          comparison=table, in_training_run=train_run is not None and run.info.run_id == train_run)


def _remember_status(client: object, run_id: str) -> str:
    """The training run's status before any registration resumed it: recorded on the run the first time
    (``RUNNING`` is what a killed earlier attempt leaves), read back on a retry."""
    run = client.get_run(run_id)  # type: ignore[attr-defined]
    before = run.data.tags.get(RUN_STATUS_TAG)
    if before is None:
        before = run.info.status
        client.set_tag(run_id, RUN_STATUS_TAG, before)  # type: ignore[attr-defined]
    return before


def _decision(client: object, name: str, recorded: dict[str, str], metrics: EvalMetrics, keys: list[str],
              rule: PromotionRule, promote: bool, champion_alias: str, champion: ChampionEvaluation | None,
              ) -> tuple[ChampionFigures | None, PromotionDecision]:
    """The promotion decision: the one an earlier attempt recorded on this version, else taken now."""
    if "promotion.decision" in recorded:
        # Taken before (and maybe applied: the champion alias may point here already): keep it, never
        # compare the version with itself.
        old = recorded.get("promotion.champion_version", "none")
        champ = None if old == "none" else _version_or_none(client, name, old)
        return ChampionFigures.recorded_on(recorded, champ), PromotionDecision.from_tags(recorded)
    figures = _champion_figures(client, name, champion_alias, champion)
    return figures, decide(metrics, keys, figures, rule, promote)


def _version_or_none(client: object, name: str, version: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)  # type: ignore[attr-defined]
    except MlflowException:
        return None


def _set_version_tags(client: object, name: str, version: str, tags: dict[str, str], recorded: dict[str, str]) -> None:
    """Write ``tags`` on the version in order (``promotion.decision`` last), skipping those already equal."""
    for key, value in tags.items():
        if recorded.get(key) != value:
            client.set_model_version_tag(name, version, key, value)  # type: ignore[attr-defined]


def _table(metrics: EvalMetrics, figures: ChampionFigures | None, decision: PromotionDecision,
           rule: PromotionRule) -> str:
    champ_values = None if figures is None else {
        k: v for k in [*metrics.values, *figures.values] if (v := figures.get(k)) is not None}
    label = f"champion v{figures.version}" if figures else "champion (none)"
    return comparison_table(metrics.values, champ_values, decision.metric, rule.guards, label)


# How often promotion takes the decision again when the champion alias keeps moving under it.
_PROMOTE_ATTEMPTS = 5


def _promote(client: object, name: str, version: str, champion_alias: str, decision: PromotionDecision,
             figures: ChampionFigures | None, redecide: Callable[[ChampionFigures | None], PromotionDecision],
             evaluated: ChampionEvaluation | None) -> tuple[ChampionFigures | None, PromotionDecision]:
    """Move the champion alias to ``version`` when ``decision`` says so, re-checking the alias right before.

    The decision compared with ``decision.champion_version``; when another registration moved the alias
    meanwhile, the decision is taken again against the new champion (its recorded figures), so a slower
    registration never overwrites a better champion promoted in between. MLflow has no compare-and-set:
    the re-read and the write are two calls, and that gap (milliseconds) is what remains.
    """
    for _ in range(_PROMOTE_ATTEMPTS):
        now = current_champion(client, name, champion_alias)  # type: ignore[arg-type]
        now_version = None if now is None else str(now.version)
        if now_version == version:
            return figures, decision  # applied already (an earlier attempt of this registration)
        if now_version == decision.champion_version:
            if decision.decision == PROMOTED:
                client.set_registered_model_alias(name, champion_alias, version)  # type: ignore[attr-defined]
            return figures, decision
        figures = _champion_figures(client, name, champion_alias, evaluated)
        decision = redecide(figures)
    raise RuntimeError(f"the {champion_alias!r} alias of {name} kept moving during promotion of v{version} "
                       f"({_PROMOTE_ATTEMPTS} tries); register again to decide against the current champion")


def _already_registered(client: object, name: str, version: ModelVersion, alias: str,
                        train_run: str | None) -> RegisterResult:
    """The result of a registration that completed before (a retry after the last write, or the same
    checkpoint registered again): its recorded decision; ``alias`` pointed at it (idempotent)."""
    version_id = str(version.version)
    client.set_registered_model_alias(name, alias, version_id)  # type: ignore[attr-defined]
    tags = dict(version.tags or {})
    decision = PromotionDecision.from_tags(tags) if "promotion.decision" in tags else None
    table = "\n".join(line for line in (version.description or "").splitlines() if line.startswith("|"))
    aliases = dict(client.get_registered_model(name).aliases)  # type: ignore[attr-defined]
    return RegisterResult(name=name, version=version_id, run_id=str(version.run_id or ""),
                          model_uri=f"models:/{name}/{version_id}", aliases=aliases, promotion=decision, tags=tags,
                          comparison=table, in_training_run=train_run is not None and version.run_id == train_run,
                          already_registered=True)


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
