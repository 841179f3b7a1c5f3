"""The champion on the challenger's terms: fetched from the registry, evaluated like the challenger, cached.

Figures compare only when they were made the same way. The champion's own
``metrics.*`` tags may come from another data version, and FSD / mIoU from
another segmenter's feature space (the evaluation segmenter is trained per data
version), so :func:`evaluate_champion` evaluates the champion's checkpoint with
the challenger's config: the same prepared data (hence the same segmenter from
the per-data-version cache and the same Inception features), the same label
maps and seeds (``evaluate.num_samples``, ``evaluate.seed``), sampler and
guidance scales.

The result is cached under ``<sdm cache>/champion-evaluations/`` keyed by
:func:`evaluation_key` (checkpoint content, data content, evaluation settings,
code), so a nightly run evaluates the champion once per data version, settings and
code, not every night. The challenger's evaluation task is keyed by the same function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdm.config import Config, to_dict
from sdm.eval.cache import cache_root, short_hash
from sdm.registry.fingerprint import code_hash, data_hash
from sdm.registry.lineage import params_hash
from sdm.registry.metrics import read_metrics
from sdm.registry.promotion import EQUAL_TERMS, ChampionFigures, current_champion

# Inside a cached champion evaluation: the key it was made for (a folder without it is not trusted).
KEY_FILE = "evaluation-key.txt"


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """sha256 over the checkpoint's weights and config (what an evaluation of it depends on)."""
    h = hashlib.sha256()
    ckpt = Path(checkpoint)
    for name in ("model.safetensors", "ema.safetensors", "config.json"):
        path = ckpt / name
        if path.exists():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# Settings that change how an evaluation runs, never its images or figures: the sampling is cut into
# per-worker slices seeded per sample (sdm.eval.ray_sampling), and a bounded SPADE cache samples the same
# images in smaller chunks (sdm.spade_budget). A rerun with a new value reuses the cached evaluation.
NO_FIGURE_KEYS = (("evaluate", "workers"), ("sample", "cache_budget_gb"))


def evaluation_settings(config: Config) -> dict[str, Any]:
    """The config an evaluation's figures depend on: the evaluate and sample sections (less
    ``NO_FIGURE_KEYS``), the rule's metric (metrics.json names it as ``primary_metric``)."""
    sections = {"evaluate": to_dict(config.evaluate), "sample": to_dict(config.sample)}
    for section, key in NO_FIGURE_KEYS:
        sections[section].pop(key, None)
    return {**sections, "metric": config.register.promotion.metric}


def evaluation_key(checkpoint: str | Path, data_version: str, config: Config) -> str:
    """sha256 of (checkpoint content, data content, evaluation settings, sdm code).

    The data part is the version's content hash (``dvc:<md5>``), not its git
    commit; the code hash covers a changed evaluator (sampler, metrics,
    segmenter training), which a commit alone may not.
    """
    parts = {"checkpoint": checkpoint_fingerprint(checkpoint), "data": data_hash(data_version),
             "settings": evaluation_settings(config), "code": code_hash()}
    return params_hash(parts)


@dataclass
class ChampionEvaluation:
    """The champion's evaluation on the challenger's terms (plain fields: it crosses Prefect tasks as a dict).

    ``unusable``: why the champion's checkpoint cannot be evaluated on this data
    (e.g. its class count differs), ``eval_dir`` then empty.
    """

    name: str
    version: str
    checkpoint: str
    eval_dir: str
    data_version: str
    key: str
    cached: bool
    unusable: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChampionEvaluation:
        return cls(**data)

    def figures(self) -> ChampionFigures:
        """The figures promotion compares with (``EQUAL_TERMS``)."""
        if self.unusable:
            return ChampionFigures(self.version, {}, EQUAL_TERMS, self.data_version, unusable=self.unusable)
        metrics = read_metrics(Path(self.eval_dir) / "metrics.json")
        return ChampionFigures(self.version, dict(metrics.values), EQUAL_TERMS, self.data_version,
                               skipped=dict(metrics.skipped))


# Under the run storage (``train.storage_path``), which Ray workers on other nodes share: a continue
# run's workers read the champion's weights from here, and its evaluation reuses the same download.
REGISTRY_DIR = ".registry"


def download_version(config: Config, name: str, version: Any) -> Path:
    """The checkpoint of registered ``version`` (an MLflow ``ModelVersion``), downloaded once per store, model,
    version and creation time into ``<train.storage_path>/.registry/`` (the creation time tells a re-created
    model's "v1" from the old one)."""
    from sdm.atomic import atomic_dir
    from sdm.registry.model_uri import checkpoint_from_registry
    from sdm.tracking import tracking_uri

    key = short_hash([tracking_uri(config), name, str(version.version), version.creation_timestamp])
    directory = Path(config.train.storage_path) / REGISTRY_DIR / f"{name}-v{version.version}-{key}"
    local = directory / "checkpoint"
    if not (local / "config.json").is_file():
        with atomic_dir(directory) as tmp:
            got = checkpoint_from_registry(f"models:/{name}/{version.version}", tmp, config, flag="the champion")
            if got.path != tmp / "checkpoint":
                got.path.rename(tmp / "checkpoint")
    return local.resolve()


def fetch_champion(config: Config, name: str | None = None) -> tuple[str, Path] | None:
    """(version, local checkpoint directory) of the version ``register.champion_alias`` points at; None when
    unset. Downloaded once (:func:`download_version`)."""
    import mlflow

    from sdm.tracking import configure

    name = name or config.register.model_name
    configure(config)
    version = current_champion(mlflow.MlflowClient(), name, config.register.champion_alias)
    if version is None:
        return None
    return str(version.version), download_version(config, name, version)


def evaluate_champion(config: Config, data: str | Path, data_version: str, *, name: str | None = None,
                      device: str = "cpu", log: Callable[[str], None] = print) -> ChampionEvaluation | None:
    """Evaluate the current champion with ``config``'s evaluation settings on ``data``; None without a champion.

    ``data`` / ``data_version``: the prepared data the challenger was evaluated
    on and its version. Reuses a cached evaluation with the same
    :func:`evaluation_key`. The champion's training run is not written to
    (its own evaluation stays as it was).
    """
    from sdm.eval.checks import EvaluationInputError
    from sdm.eval.runner import EvalRequest, run_evaluation

    name = name or config.register.model_name
    fetched = fetch_champion(config, name)
    if fetched is None:
        log(f"no champion ({name}@{config.register.champion_alias}): nothing to compare with")
        return None
    version, checkpoint = fetched
    key = evaluation_key(checkpoint, data_version, config)
    out = cache_root() / "champion-evaluations" / key[:32]
    result = ChampionEvaluation(name=name, version=version, checkpoint=str(checkpoint), eval_dir=str(out),
                                data_version=data_version, key=key, cached=True)
    if (out / "metrics.json").is_file() and (out / KEY_FILE).is_file() and (out / KEY_FILE).read_text() == key:
        log(f"champion v{version}: reusing its evaluation on data {data_version} ({out})")
        return result
    log(f"champion v{version}: evaluating on data {data_version} with the challenger's settings")
    from sdm.eval.ray_sampling import cluster_sampling

    # As the challenger's evaluation (flows.tasks.evaluate_checkpoint): on a cluster (RAY_ADDRESS) the sampling
    # is spread like training; the images are the same either way.
    workers, use_gpu = cluster_sampling(config.evaluate.workers, config.evaluate.use_gpu, config.train.workers,
                                        config.train.use_gpu)
    try:
        run_evaluation(EvalRequest(checkpoint=checkpoint, data=Path(data), out=out, log_mlflow=False,
                                   device=device, workers=workers, use_gpu=use_gpu), config, log=log)
    except EvaluationInputError as e:
        # The data changed under the champion (classes, image size): there is nothing to compare.
        log(f"champion v{version} cannot be evaluated on {data}: {e}")
        return ChampionEvaluation(name=name, version=version, checkpoint=str(checkpoint), eval_dir="",
                                  data_version=data_version, key=key, cached=False, unusable=str(e))
    (out / KEY_FILE).write_text(key)
    result.cached = False
    return result
