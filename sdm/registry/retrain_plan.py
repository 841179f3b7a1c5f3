"""What a scheduled ``retrain`` run does, decided before anything trains (DESIGN.md: Retraining).

``plan_retrain`` compares the fingerprint of this run (data, training params, code:
``sdm.registry.fingerprint``) with the registry and picks one action:

- ``up-to-date``: the champion (or another registered version, not promoted) has
  this fingerprint: nothing to train, nothing to register;
- ``resume``: the run folder this fingerprint names holds checkpoints of an
  interrupted run (or a finished run that was never registered): train it on;
- ``continue``: the champion's weights + EMA, then ``retrain.continue_steps``
  finetune steps on the new data;
- ``scratch``: both phases from random weights.

The run name is derived from the fingerprint (and from where training starts), so
the next run on the same data, params and code finds an interrupted run's folder.
Every bad input (an unresolvable champion, a champion checkpoint without a config,
``continue`` asked for with a changed architecture) is an error here, before training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdm.config import Config, to_dict
from sdm.errors import InputError
from sdm.registry.fingerprint import Fingerprint, config_diff, fingerprint

UP_TO_DATE = "up-to-date"
RESUME = "resume"
CONTINUE = "continue"
SCRATCH = "scratch"

# Model keys that change how the network runs, not what it computes: a champion that
# differs only in these can still be continued.
RUNTIME_ONLY = frozenset({"model.use_checkpoint"})


class RetrainPlanError(InputError):
    """The retrain run cannot go ahead as configured; the message names the input."""


@dataclass
class RetrainPlan:
    """The decision of one ``retrain`` run and everything training needs from it."""

    action: str  # up-to-date | resume | continue | scratch
    mode: str  # what the run trains: continue | scratch ("" when up to date)
    reason: str
    run_name: str
    fingerprint: Fingerprint
    init_from: str | None = None  # a local checkpoint directory whose weights + EMA start the run
    init_uri: str | None = None  # where that checkpoint comes from: models:/NAME/VERSION
    phases: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    champion_version: str | None = None
    matching_version: str | None = None  # up to date: the version with this fingerprint

    @property
    def trains(self) -> bool:
        return self.action != UP_TO_DATE

    def train_config(self, config: Config) -> Config:
        """The config training runs with: a continue run trains only finetune, for ``continue_steps``."""
        if self.mode != CONTINUE:
            return config
        tc = config.train
        finetune = dataclasses.replace(tc.finetune, steps=self.steps["finetune"])
        return dataclasses.replace(config, train=dataclasses.replace(tc, phases=["finetune"], finetune=finetune))

    def lineage_tags(self) -> dict[str, str]:
        """The ``lineage.*`` tags a version trained by this plan carries (register adds them)."""
        return {**self.fingerprint.tags(), "lineage.retrain_action": self.action,
                "lineage.retrain_mode": self.mode or "none", "lineage.init_from": self.init_uri or "none"}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (the flow's result and summary artifact)."""
        out = dataclasses.asdict(self)
        out["fingerprint"] = {"combined": self.fingerprint.combined, **dataclasses.asdict(self.fingerprint)}
        return out


def _all_versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def architecture_diff(champion: Config, config: Config) -> dict[str, tuple[Any, Any]]:
    """``model`` and ``diffusion`` keys whose values differ (champion, now); runtime-only keys ignored."""
    a, b = to_dict(champion), to_dict(config)
    diff = config_diff({s: a[s] for s in ("model", "diffusion")}, {s: b[s] for s in ("model", "diffusion")})
    return {k: v for k, v in diff.items() if k not in RUNTIME_ONLY}


def _format_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in ((k, *v) for k, v in diff.items()))


def run_name_for(fp: Fingerprint, mode: str, init_uri: str | None, steps: dict[str, int],
                 prefix: str = "retrain") -> str:
    """``<prefix>-<12 hex>`` of the fingerprint and where/how long training runs: the same inputs, the same folder."""
    key = f"{fp.combined}|{mode}|{init_uri or ''}|{sorted(steps.items())}"
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _resume_state(run_dir: Path) -> str | None:
    """What the run folder holds to resume from (a phrase), or None when it holds nothing."""
    from sdm.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is not None:
        done = (run_dir / "final" / "config.json").is_file()
        return (f"{run_dir.name} finished training ({latest.name}) but was never registered: resuming finds "
                "nothing left to train" if done else f"{run_dir.name} was interrupted at {latest.name}: resuming it")
    return None


def plan_retrain(config: Config, data_version: str, *, force: bool = False,
                 package: str | Path | None = None) -> RetrainPlan:
    """Decide what this ``retrain`` run does (see the module docstring); ``force`` trains even when up to date.

    ``config`` is the resolved config the run would train with (before the plan's
    own changes, see ``RetrainPlan.train_config``); ``package`` the code to hash
    (default: the installed ``sdm``).
    """
    import mlflow

    from sdm.model import read_checkpoint_config
    from sdm.registry.champion import download_version
    from sdm.registry.promotion import current_champion
    from sdm.tracking import configure

    fp = fingerprint(config, data_version, package)
    reg = config.register
    configure(config)
    client = mlflow.MlflowClient()
    champion = current_champion(client, reg.model_name, reg.champion_alias)
    champion_version = str(champion.version) if champion is not None else None

    if not force:
        if champion is not None and not fp.differences(champion.tags or {}):
            return RetrainPlan(UP_TO_DATE, "", f"up to date: champion v{champion.version} was trained on this data, "
                               "these params and this code", "", fp, champion_version=champion_version,
                               matching_version=champion_version)
        same = [v for v in _all_versions(client, reg.model_name)
                if (v.tags or {}).get("lineage.fingerprint") == fp.combined]
        if same:
            newest = max(same, key=lambda v: int(v.version))
            return RetrainPlan(UP_TO_DATE, "", f"up to date: v{newest.version} was trained on this data, these params "
                               f"and this code and was not promoted (champion: "
                               f"{'v' + champion_version if champion_version else 'none'}); --force trains again",
                               "", fp, champion_version=champion_version, matching_version=str(newest.version))

    changed = ("; ".join(fp.differences(champion.tags or {})) or "nothing changed") if champion is not None \
        else "no champion yet"
    mode, why, init_from, init_uri = SCRATCH, "", None, None
    requested = config.retrain.mode
    if champion is None:
        why = "no champion to continue from" if requested != SCRATCH else "retrain.mode is scratch"
    elif requested == SCRATCH:
        why = "retrain.mode is scratch"
    else:
        local = download_version(config, reg.model_name, champion)
        diff = architecture_diff(read_checkpoint_config(local), config)
        uri = f"models:/{reg.model_name}/{champion.version}"
        if not diff:
            mode, init_from, init_uri = CONTINUE, str(local), uri
            why = f"continuing from champion v{champion.version} ({uri}) for {config.retrain.continue_steps} " \
                  "finetune steps"
        elif requested == CONTINUE:
            raise RetrainPlanError(f"retrain.mode continue: champion v{champion.version} ({uri}) has another "
                                   f"architecture ({_format_diff(diff)}); set retrain.mode to scratch or auto")
        else:
            why = f"the architecture changed since champion v{champion.version} ({_format_diff(diff)}): from scratch"
    if mode == CONTINUE:
        phases, steps = ["finetune"], {"finetune": config.retrain.continue_steps}
    else:
        phases = list(config.train.phases)
        steps = {p: getattr(config.train, p).steps for p in phases}
    run_name = run_name_for(fp, mode, init_uri, steps)
    if force:
        # A forced run trains anew: a finished folder of the same inputs would only be re-registered.
        run_name += "-forced-" + time.strftime("%Y%m%d%H%M%S", time.gmtime())
    action = mode
    reason = f"{changed}; {why}" + ("; --force" if force else "")
    resumed = _resume_state(Path(config.train.storage_path) / run_name)
    if resumed is not None:
        action, reason = RESUME, f"{resumed} ({reason})"
    return RetrainPlan(action, mode, reason, run_name, fp, init_from=init_from, init_uri=init_uri,
                       phases=phases, steps=steps, champion_version=champion_version)
