"""``register_checkpoint``: an evaluated checkpoint becomes a registered, tagged, aliased model version.

Every input is checked before anything is written to MLflow (the checkpoint
loads, the metrics hold a usable primary metric, the aliases are valid), so a
bad input leaves no half-made run or version behind.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sdm.config import Config, to_dict
from sdm.errors import InputError
from sdm.registry.lineage import lineage_tags
from sdm.registry.metrics import read_metrics, usable_candidates
from sdm.registry.promotion import PROMOTED, PromotionDecision, current_champion, decide, metric_tag
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


def _check_alias(alias: str, what: str) -> None:
    if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegisterError(f"{what} {alias!r} is not a valid MLflow alias: use letters, digits, '_' or '-', "
                            "not 'latest' or a version-like 'v3'")


def _description(ckpt: Path, metrics: dict[str, float], decision: PromotionDecision) -> str:
    figures = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))
    return (f"Registered by `sdm register` from {ckpt}.\n\nEvaluation: {figures}.\n\n"
            f"Promotion: {decision.decision} ({decision.reason}).")


def register_checkpoint(
    checkpoint: str | Path,
    metrics_file: str | Path,
    config: Config,
    *,
    name: str | None = None,
    alias: str | None = None,
    promote: bool | None = None,
) -> RegisterResult:
    """Log ``checkpoint`` as an MLflow pyfunc model version of ``name``, tag its lineage, alias and maybe promote.

    ``config`` is the resolved config of the registering command: its
    ``register`` section gives the defaults for ``name``, ``alias``, ``promote``,
    the champion alias and the primary metric, and its ``sample`` section the
    primary metric's guidance scale and the model's default sampling params.
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
    keys = usable_candidates(metrics, reg.primary_metric, config.sample.guidance_scale)
    source = pyfunc_path()
    requirements = pip_requirements()
    ckpt_dict = to_dict(ckpt_config)
    tags = lineage_tags(ckpt, ckpt_dict, meta)
    tags.update({metric_tag(k): repr(v) for k, v in metrics.values.items()})
    tags["lineage.metrics_file"] = str(Path(metrics_file).resolve())

    configure(config)
    # The experiment named after the model, where `sdm train` logs its runs by default.
    experiment_id = ensure_experiment(name, config)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="sdm-register-") as tmp, \
            mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}") as run:
        staged = stage_checkpoint(ckpt, Path(tmp))
        code = stage_code(Path(tmp) / "code")
        mlflow.set_tags(tags)
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.values.items()})
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
        champion = current_champion(client, name, champion_alias)
        decision = decide(metrics, keys, champion, promote)
        all_tags = {**tags, **decision.tags()}
        for key, value in all_tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.update_model_version(name, version, description=_description(ckpt, metrics.values, decision))
        client.set_registered_model_alias(name, alias, version)
        if decision.decision == PROMOTED:
            client.set_registered_model_alias(name, champion_alias, version)
        mlflow.set_tags(decision.tags())
    aliases = dict(client.get_registered_model(name).aliases)
    return RegisterResult(name=name, version=version, run_id=run.info.run_id, model_uri=f"models:/{name}/{version}",
                          aliases=aliases, promotion=decision, tags=all_tags)
