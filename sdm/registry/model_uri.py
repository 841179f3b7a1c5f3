"""``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) -> a local checkpoint directory.

``sdm sample --model`` uses this to behave exactly like ``--checkpoint``: the
registered version's ``checkpoint`` artifact (safetensors + config.json) is
downloaded and loaded with ``sdm.model.load_checkpoint``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdm.errors import InputError
from sdm.tracking import configure

if TYPE_CHECKING:
    from sdm.config import Config

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelUriError(InputError):
    """A model URI that names no registered sdm model version; the message says what exists instead."""


@dataclass
class RegistryCheckpoint:
    """A registered version, downloaded: its checkpoint directory and where it came from."""

    path: Path
    name: str
    version: str
    uri: str


def parse_model_uri(uri: str, flag: str = "--model") -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/3`` -> (NAME, None, "3")."""
    m = _URI.match(uri.strip())
    if not m:
        raise ModelUriError(f"{flag} {uri!r}: expected models:/NAME@ALIAS (e.g. models:/sdm-toy@champion) "
                            "or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def resolve_version(uri: str, config: Config | None = None, flag: str = "--model") -> tuple[str, str, Any]:
    """``models:/NAME/V`` or ``models:/NAME@ALIAS`` -> (name, version, the MLflow ModelVersion).

    Unknown models, versions and aliases are a :class:`ModelUriError` saying what exists; ``flag`` names the
    input in the errors.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri, flag)
    store = configure(config)
    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelUriError(f"{flag} {uri}: no registered model {name!r} in {store} "
                            f"(registered: {', '.join(known) or 'none'}; `sdm register` makes one)") from None
    if alias is not None:
        if alias not in model.aliases:
            have = ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "none"
            raise ModelUriError(f"{flag} {uri}: model {name!r} has no alias {alias!r} (aliases: {have})")
        version = str(model.aliases[alias])
    try:
        found = client.get_model_version(name, version)
    except MlflowException:
        raise ModelUriError(f"{flag} {uri}: model {name!r} has no version {version} in {store}") from None
    return name, str(version), found


def checkpoint_from_registry(uri: str, dst: str | Path, config: Config | None = None,
                             flag: str = "--model") -> RegistryCheckpoint:
    """Download the checkpoint of the version ``uri`` names into ``dst``; clear errors for unknown names/aliases.

    ``flag`` names the input in the errors (``--model``, ``--init-from``, the champion).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name, version, _ = resolve_version(uri, config, flag)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    # The resolved version, not the alias: the alias may move while we download.
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}/artifacts/checkpoint", dst_path=str(dst)))
    except (MlflowException, OSError):
        local = dst / "missing"
    if not (local / "config.json").is_file():
        raise ModelUriError(f"{flag} {uri}: version {version} of {name!r} holds no sdm checkpoint "
                            "(artifacts/checkpoint/config.json); was it registered with `sdm register`?")
    return RegistryCheckpoint(path=local, name=name, version=version, uri=uri)
