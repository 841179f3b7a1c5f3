"""One registered version per checkpoint: find what an earlier (interrupted) registration left, and reuse it.

A registration writes to MLflow in steps (log the model, create the version,
tag it, alias it, promote it); a process killed or a store failing between two
steps leaves part of it. Registering the same checkpoint again (a Prefect
retry, a rerun, ``sdm register`` twice) must finish that part instead of
making a second version. The key is the checkpoint's weights hash
(:data:`~sdm.registry.lineage.CHECKPOINT_SHA256_TAG`), written:

- on the logged model at its creation (``log_model(tags=...)``), so a model
  whose upload finished (status READY) but whose version was never created is
  reused; an upload cut half-way leaves the model PENDING or FAILED, never
  READY, so it is never mistaken for a complete one;
- on the model version in the same call that creates it, so no version exists
  without it;
- and :data:`REGISTRATION_TAG` = ``complete`` as the version's very last write:
  a version without it is finished, not trusted as done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdm.registry.lineage import CHECKPOINT_SHA256_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# Written last on a version: every tag, the description, the aliases and the promotion are in place.
REGISTRATION_TAG = "sdm.registration"
COMPLETE = "complete"
# The status of a training run before a registration resumed it (restored after, even across retries).
RUN_STATUS_TAG = "sdm.status_before_register"


def _quoted(value: str) -> str:
    """``value`` as a single-quoted MLflow search-filter literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def versions_of_checkpoint(client: MlflowClient, name: str, sha256: str) -> list[ModelVersion]:
    """Every version of registered model ``name`` keyed by ``sha256``, oldest first (none: ``[]``)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = {_quoted(name)}")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted((v for v in found if (v.tags or {}).get(CHECKPOINT_SHA256_TAG) == sha256),
                  key=lambda v: int(v.version))


def model_id_of(version: ModelVersion) -> str | None:
    """The logged model a version was created from (``model_id``, else its ``models:/<id>`` source), or None."""
    model_id = getattr(version, "model_id", None)
    source = str(version.source or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/", 1)[0]
    return model_id or None


def is_usable(client: MlflowClient, version: ModelVersion) -> bool:
    """True when ``version`` was created (READY) from a model whose upload finished (its logged model READY).

    A version whose registration failed, or whose logged model is still PENDING (the upload was cut) or
    FAILED, holds no complete model and is not reused.
    """
    from mlflow.exceptions import MlflowException

    if str(version.status) != "READY":
        return False
    model_id = model_id_of(version)
    if not model_id:
        return True  # registered from a run's artifacts (an older registration): READY is all there is
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        return False
    return str(getattr(model.status, "value", model.status)) == "READY"


def usable_versions(client: MlflowClient, name: str, sha256: str) -> list[ModelVersion]:
    """The usable versions of ``name`` for the checkpoint ``sha256``, oldest first."""
    return [v for v in versions_of_checkpoint(client, name, sha256) if is_usable(client, v)]


def is_complete(version: ModelVersion) -> bool:
    """True when the registration of ``version`` wrote its last step (:data:`REGISTRATION_TAG`)."""
    return (version.tags or {}).get(REGISTRATION_TAG) == COMPLETE


def reusable_logged_model(client: MlflowClient, experiment_id: str, run_id: str, sha256: str) -> str | None:
    """The id of a READY model of ``run_id`` logged for the checkpoint ``sha256`` (an attempt that died
    before creating its version), the newest; None when there is none."""
    found = client.search_logged_models(
        [experiment_id],
        filter_string=f"tags.`{CHECKPOINT_SHA256_TAG}` = {_quoted(sha256)} AND source_run_id = {_quoted(run_id)}")
    ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
    return max(ready, key=lambda m: m.creation_timestamp).model_id if ready else None


def earlier_register_run(client: MlflowClient, experiment_id: str, run_name: str, sha256: str) -> str | None:
    """A ``register-<name>`` run an earlier attempt made for the checkpoint ``sha256`` (the newest), else None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CHECKPOINT_SHA256_TAG}` = {_quoted(sha256)} AND "
                      f"tags.`mlflow.runName` = {_quoted(run_name)}",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def claim(client: MlflowClient, name: str, sha256: str, mine: str) -> str:
    """After creating version ``mine``: the version of this checkpoint that stands (the oldest usable one).

    Two registrations of one checkpoint racing past the lookup both create a version; each then keeps the
    oldest and deletes its own newer one (it holds the same weights, so nothing is lost).
    """
    usable = usable_versions(client, name, sha256)
    if not usable or str(usable[0].version) == str(mine):
        return str(mine)
    client.delete_model_version(name, mine)
    return str(usable[0].version)
