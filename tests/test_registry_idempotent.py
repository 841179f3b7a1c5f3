"""Idempotent registration: a registration killed at any step, then retried, leaves exactly one complete version.

The faults are real: a child process registers and is killed with SIGKILL
(by itself, from a patched MLflow call) at the step under test; the retry runs
here against the same sqlite store. The concurrent promotion test interleaves
a second registration process at the worst moment (after the decision, before
the champion alias moves).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _registry_helpers import make_checkpoint, tiny_config, write_metrics

import sdm.registry.register as register_module
from sdm.registry.idempotent import COMPLETE, REGISTRATION_TAG, model_id_of
from sdm.registry.lineage import CHECKPOINT_SHA256_TAG, checkpoint_sha256
from sdm.registry.register import register_checkpoint

NAME = "sdm-idem"
TESTS = Path(__file__).resolve().parent

# Registers argv[1] (metrics argv[2]) as NAME; argv[3] says where it kills itself with SIGKILL.
CHILD = textwrap.dedent(f"""
    import os, signal, sys
    import mlflow
    from _registry_helpers import tiny_config
    from sdm.registry.register import register_checkpoint

    ckpt, metrics, kill_at = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_tag = mlflow.MlflowClient.set_model_version_tag

    def tag(self, name, version, key, value):
        if kill_at == "version-created":
            die()  # the version exists, nothing written on it yet
        if kill_at == "before-complete" and key == {REGISTRATION_TAG!r}:
            die()  # tags, description, aliases and the promotion done: only the completion mark missing
        return real_tag(self, name, version, key, value)

    mlflow.MlflowClient.set_model_version_tag = tag
    if kill_at == "model-logged":
        mlflow.register_model = lambda *args, **kwargs: die()  # uploaded (READY), no version created yet
    if kill_at == "upload-half":
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
        real_dir = LocalArtifactRepository.log_artifacts

        def half(self, local_dir, artifact_path=None):
            if "/models/" in self.artifact_dir:
                first = sorted(os.listdir(local_dir))[0]
                src = os.path.join(local_dir, first)
                if os.path.isfile(src):
                    self.log_artifact(src, artifact_path)
                die()  # the model's upload cut half-way
            return real_dir(self, local_dir, artifact_path)

        LocalArtifactRepository.log_artifacts = half
    register_checkpoint(ckpt, metrics, tiny_config(), name={NAME!r})
""")


def _child(checkpoint: Path, metrics: Path, kill_at: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "register_child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), str(checkpoint), str(metrics), kill_at], env=env,
                          capture_output=True, text=True, timeout=300)


def _versions(client) -> list:
    return sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))


def _logged_models(mlflow_uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)  # this store (the fluent API's URI is process-global)
    return list(client.search_logged_models([e.experiment_id for e in client.search_experiments()]))


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["version-created", "model-logged", "upload-half"])
def test_killed_registration_retried_gives_one_complete_version(mlflow_uri: str, tmp_path: Path,
                                                                kill_at: str) -> None:
    import mlflow

    ckpt = make_checkpoint(tmp_path / "run" / "final", seed=1)
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4, "miou@1.5": 0.3})
    proc = _child(ckpt, metrics, kill_at, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_uri)
    before = _versions(client)
    if kill_at == "version-created":
        # The version exists, keyed by its checkpoint, but is not marked complete.
        assert [str(v.version) for v in before] == ["1"]
        assert before[0].tags.get(CHECKPOINT_SHA256_TAG) == checkpoint_sha256(ckpt)
        assert REGISTRATION_TAG not in before[0].tags
    elif kill_at == "model-logged":
        # The upload finished, the version was never created.
        assert before == [] and [str(m.status) for m in _logged_models(mlflow_uri)] == ["READY"]
    else:
        # Cut during the model's upload: no version, a logged model that never became READY.
        statuses = [str(m.status) for m in _logged_models(mlflow_uri)]
        assert before == [] and len(statuses) == 1 and statuses != ["READY"]

    result = register_checkpoint(ckpt, metrics, tiny_config(), name=NAME)  # the retry

    after = _versions(client)
    assert [str(v.version) for v in after] == ["1"], "the retry made a second version"
    version = after[0]
    assert version.tags[REGISTRATION_TAG] == COMPLETE
    assert version.tags["promotion.decision"] == "promoted" and "lineage.git_commit" in version.tags
    assert "**Promotion: promoted**" in version.description
    assert result.version == "1" and result.aliases == {"candidate": 1, "champion": 1}
    # The version's model is whole: its checkpoint downloads with the same weights.
    from sdm.registry.model_uri import checkpoint_from_registry

    got = checkpoint_from_registry(f"models:/{NAME}@champion", tmp_path / "dl")
    assert checkpoint_sha256(got.path) == checkpoint_sha256(ckpt)
    models = _logged_models(mlflow_uri)
    if kill_at == "upload-half":
        # The half-uploaded model was not reused: a whole one was logged beside it.
        assert len(models) == 2 and model_id_of(version) in [m.model_id for m in models if str(m.status) == "READY"]
    else:
        # The upload had finished: the retry reused the model, uploaded nothing again.
        assert len(models) == 1 and model_id_of(version) == models[0].model_id


@pytest.mark.slow
def test_killed_after_promotion_keeps_its_decision_on_retry(mlflow_uri: str, tmp_path: Path) -> None:
    """Killed after the champion alias moved to it: the retry must not compare the version with itself."""
    import mlflow

    champion = make_checkpoint(tmp_path / "a" / "final", seed=1)
    register_checkpoint(champion, write_metrics(tmp_path / "a.json", {"fsd@1.5": 0.5}), tiny_config(), name=NAME)
    better = make_checkpoint(tmp_path / "b" / "final", seed=2)
    metrics = write_metrics(tmp_path / "b.json", {"fsd@1.5": 0.3})
    proc = _child(better, metrics, "before-complete", tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_uri)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert REGISTRATION_TAG not in client.get_model_version(NAME, "2").tags

    result = register_checkpoint(better, metrics, tiny_config(), name=NAME)

    assert [str(v.version) for v in _versions(client)] == ["1", "2"]
    assert result.version == "2" and result.promotion.decision == "promoted"
    assert result.promotion.champion_version == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[REGISTRATION_TAG] == COMPLETE and tags["promotion.champion_version"] == "1"
    assert result.aliases == {"candidate": 2, "champion": 2}


def test_same_checkpoint_twice_is_one_version(mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    ckpt = make_checkpoint(tmp_path / "final", seed=3)
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4})
    first = register_checkpoint(ckpt, metrics, tiny_config(), name=NAME)
    again = register_checkpoint(ckpt, metrics, tiny_config(), name=NAME, alias="nightly")
    assert first.version == again.version == "1"
    assert again.already_registered and not first.already_registered
    assert again.promotion is not None and again.promotion.decision == "promoted"
    assert "fsd@1.5" in again.comparison
    assert again.aliases == {"candidate": 1, "champion": 1, "nightly": 1}
    assert len(_versions(mlflow.MlflowClient(mlflow_uri))) == 1 and len(_logged_models(mlflow_uri)) == 1


def test_a_failure_in_a_later_mlflow_call_is_finished_by_the_retry(mlflow_uri: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception (not a kill) after the version was tagged, in the training run: the retry completes it
    and the training run keeps the status training gave it."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.create_experiment("train")
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id, status="KILLED")  # training was stopped, its final/ exported
    ckpt = make_checkpoint(tmp_path / "final", seed=4, meta={"mlflow_run_id": run.info.run_id})
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4})
    calls = {"n": 0}
    real_update = mlflow.MlflowClient.update_model_version

    def failing_update(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("tracking server went away (injected)")
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "update_model_version", failing_update)
    with pytest.raises(ConnectionError):
        register_checkpoint(ckpt, metrics, tiny_config(), name=NAME)
    # The failed attempt left the training run marked FAILED (MLflow's run context on an exception).
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    result = register_checkpoint(ckpt, metrics, tiny_config(), name=NAME)
    assert [str(v.version) for v in _versions(client)] == ["1"]
    assert result.in_training_run and result.run_id == run.info.run_id
    assert client.get_model_version(NAME, "1").tags[REGISTRATION_TAG] == COMPLETE
    after = client.get_run(run.info.run_id)
    assert after.info.status == "KILLED" and "sdm.status_before_register" not in after.data.tags


@pytest.mark.slow
def test_promotion_rechecks_the_champion_moved_by_a_concurrent_registration(
        mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B decides "promoted" against champion A; before B moves the alias, another process registers C (better
    than B) as champion. B must re-decide against C and keep it, not overwrite it."""
    import mlflow

    register_checkpoint(make_checkpoint(tmp_path / "a" / "final", seed=1),
                        write_metrics(tmp_path / "a.json", {"fsd@1.5": 0.5}), tiny_config(), name=NAME)
    c_ckpt = make_checkpoint(tmp_path / "c" / "final", seed=3)
    c_metrics = write_metrics(tmp_path / "c.json", {"fsd@1.5": 0.2})
    real_promote = register_module._promote

    def concurrent_then_promote(*args, **kwargs):
        proc = _child(c_ckpt, c_metrics, "none", tmp_path)  # runs to completion: C becomes champion
        assert proc.returncode == 0, proc.stderr[-3000:]
        return real_promote(*args, **kwargs)

    monkeypatch.setattr(register_module, "_promote", concurrent_then_promote)
    b = register_checkpoint(make_checkpoint(tmp_path / "b" / "final", seed=2),
                            write_metrics(tmp_path / "b.json", {"fsd@1.5": 0.3}), tiny_config(), name=NAME)
    client = mlflow.MlflowClient(mlflow_uri)
    assert b.version == "2"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3", "B overwrote the better C"
    assert b.promotion.decision == "kept" and b.promotion.champion_version == "3"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.decision"] == "kept" and tags["promotion.champion_version"] == "3"
    assert tags[REGISTRATION_TAG] == COMPLETE


def test_a_version_of_an_unfinished_upload_is_not_taken_for_complete(mlflow_uri: str, tmp_path: Path) -> None:
    """A version keyed by the checkpoint whose logged model never became READY (its upload was cut) is not
    reused: the registration makes a whole one."""
    import mlflow

    ckpt = make_checkpoint(tmp_path / "final", seed=5)
    mlflow.set_tracking_uri(mlflow_uri)  # the registry resolves models:/ through the process-wide store
    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.create_experiment("elsewhere")
    run = client.create_run(exp)
    pending = client.create_logged_model(exp, name="model", source_run_id=run.info.run_id)  # PENDING
    client.create_registered_model(NAME)
    client.create_model_version(NAME, f"models:/{pending.model_id}", run_id=run.info.run_id,
                                tags={CHECKPOINT_SHA256_TAG: checkpoint_sha256(ckpt)}, model_id=pending.model_id)
    result = register_checkpoint(ckpt, write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4}), tiny_config(),
                                 name=NAME)
    assert result.version == "2" and result.aliases == {"candidate": 2, "champion": 2}
    assert client.get_model_version(NAME, "2").tags[REGISTRATION_TAG] == COMPLETE
    assert REGISTRATION_TAG not in client.get_model_version(NAME, "1").tags


def test_cli_register_against_an_unreachable_store_is_an_outage_not_bad_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """exit 1 (not 2) and the advice that running it again is safe; nothing to clean up."""
    import socket

    from typer.testing import CliRunner

    from sdm.cli import app

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connections are refused
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    ckpt = make_checkpoint(tmp_path / "final", seed=6)
    metrics = write_metrics(tmp_path / "m.json", {"fsd@1.5": 0.4})
    result = CliRunner().invoke(app, ["register", "--checkpoint", str(ckpt), "--metrics", str(metrics),
                                      "--set", f"register.tracking_uri=http://127.0.0.1:{port}"])
    assert result.exit_code == 1, result.output
    assert "did not answer" in result.output and "run the same command again" in result.output
