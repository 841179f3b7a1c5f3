"""What a trained model depends on, as three hashes: the data, the training params, the code.

``retrain`` compares these with the champion's ``lineage.fingerprint.*`` tags to
decide whether there is anything to train (``sdm.registry.retrain_plan``).

- **data**: the content hash of the data version (``dvc:<md5>@<commit>`` -> ``dvc:<md5>``);
  the git commit is left out: a new commit alone does not change the data.
- **params**: sha256 of the training-relevant config (``TRAINING_SECTIONS``), less
  the keys that change no weight (``NO_WEIGHT_KEYS``). The worker count is one of
  them: the data order, noise and label drop derive from (seed, phase, step,
  sample index), so N workers train what one worker would (README: Resume).
- **code**: sha256 over the ``sdm`` package's ``.py`` files, sorted, path + content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.config import Config, to_dict
from sdm.registry.lineage import params_hash

# The sections a model's weights depend on (data.* only for the augmentation keys below:
# what the prepared data holds is the data hash's job).
TRAINING_SECTIONS = ("model", "diffusion", "train")
# Training-time data keys outside DVC's prepared output: augmentation changes the weights.
AUGMENTATION_KEYS = ("random_flip", "random_crop", "crop_scale")
# Keys of TRAINING_SECTIONS that change no weight: where things go, how often to log or
# checkpoint, how many workers (see the module docstring), how many restarts, and gradient
# checkpointing (recomputes activations, same math).
NO_WEIGHT_KEYS = frozenset({
    "train.storage_path", "train.workers", "train.cpus_per_worker", "train.checkpoint_every",
    "train.keep_checkpoints", "train.log_every", "train.sample_every", "train.max_failures",
    "model.use_checkpoint",
})

TAG_PREFIX = "lineage.fingerprint"
PARTS = ("data", "params", "code")


def training_params(config: Config) -> dict[str, Any]:
    """The config values the weights depend on, as a nested dict (``NO_WEIGHT_KEYS`` removed)."""
    full = to_dict(config)
    out: dict[str, Any] = {s: full[s] for s in TRAINING_SECTIONS}
    out["data"] = {k: full["data"][k] for k in AUGMENTATION_KEYS}
    for key in NO_WEIGHT_KEYS:
        section, name = key.split(".", 1)
        out[section].pop(name, None)
    return out


def data_hash(data_version: str) -> str:
    """``"dvc:<md5>@<commit>"`` -> ``"dvc:<md5>"``: the part that names the data's content."""
    return data_version.split("@", 1)[0]


def code_hash(package: str | Path | None = None) -> str:
    """sha256 over the package's ``.py`` files (relative path + content, sorted by path)."""
    if package is None:
        import sdm

        package = Path(sdm.__file__).parent
    root = Path(package)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """The three parts (data content id, params sha256, code sha256) and their combination."""

    data: str
    params: str
    code: str

    @property
    def combined(self) -> str:
        return hashlib.sha256(f"{self.data}|{self.params}|{self.code}".encode()).hexdigest()

    def tags(self) -> dict[str, str]:
        """``lineage.fingerprint.{data,params,code}`` and ``lineage.fingerprint`` (the combination)."""
        return {TAG_PREFIX: self.combined, **{f"{TAG_PREFIX}.{p}": getattr(self, p) for p in PARTS}}

    def differences(self, tags: dict[str, str]) -> list[str]:
        """The parts that differ from a version's tags, each a short phrase (empty: equal)."""
        out = []
        for part in PARTS:
            theirs = tags.get(f"{TAG_PREFIX}.{part}")
            mine = getattr(self, part)
            if theirs is None:
                out.append(f"{part} unknown (no {TAG_PREFIX}.{part} tag)")
            elif theirs != mine:
                shown = (theirs, mine) if part == "data" else (theirs[:12], mine[:12])
                out.append(f"{part} changed ({shown[0]} -> {shown[1]})")
        return out


def fingerprint(config: Config, data_version: str, package: str | Path | None = None) -> Fingerprint:
    """The fingerprint of training ``config`` on ``data_version`` with this code."""
    return Fingerprint(data=data_hash(data_version), params=params_hash(training_params(config)),
                       code=code_hash(package))


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested dicts: ``{"model.num_channels": (old, new)}``."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(config_diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out[f"{prefix}{key}"] = (va, vb)
    return out
