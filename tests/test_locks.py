"""sdm.locks: one writer per run folder, data output and project; a second one fails at once naming the first.

The first holder is always a real child process (the lock module itself, a
real ``prepare``, a real ``train`` and the real retrain flow body, each paused
at a point inside its lock); the takeover tests SIGKILL it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _process_helpers import kill9, start_child, wait_for
from typer.testing import CliRunner

from sdm.cli import app
from sdm.locks import LockBusyError, hold_lock, lock_path_for, lock_target, read_holder

HOLDER = """
    from sdm.locks import lock_target
    import time
    with lock_target({target!r}, "the test target") as holder:
        print("held", flush=True)
        time.sleep(600)
"""


def test_second_holder_fails_at_once_naming_the_first_then_takes_over_after_sigkill(tmp_path: Path) -> None:
    target = tmp_path / "out"
    child = start_child(HOLDER.format(target=str(target)))
    try:
        wait_for(child, "held")
        holder = read_holder(lock_path_for(target))
        assert holder is not None and holder["pid"] == child.pid
        start = time.monotonic()
        with pytest.raises(LockBusyError) as err, lock_target(target, "the test target"):
            pass
        assert time.monotonic() - start < 2  # no waiting
        msg = str(err.value)
        assert f"pid {child.pid}" in msg and holder["host"] in msg and holder["started"] in msg
        assert "the test target is in use" in msg and str(lock_path_for(target)) in msg
    finally:
        kill9(child)
    # The kernel dropped the dead holder's flock: the lock is free, the stale record is replaced by ours.
    with lock_target(target, "the test target") as mine:
        assert read_holder(lock_path_for(target)) == mine and mine["pid"] != child.pid
    assert read_holder(lock_path_for(target)) is None  # released: the record goes with it


def test_one_process_cannot_hold_a_lock_twice(tmp_path: Path) -> None:
    lock = tmp_path / ".x.sdm-lock"
    with hold_lock(lock, "x"), pytest.raises(LockBusyError, match="x is in use"), hold_lock(lock, "x"):
        pass
    with hold_lock(lock, "x"):  # released after the block, also after the refused attempt
        pass


def _synth(folder: Path) -> Path:
    from sdm.data.synthetic import synthesize

    return synthesize(folder, n=6, size=32, seed=0, workers=1)


SLOW_PREPARE = """
    import time
    import sdm.data.prepare as P

    def stuck(*args, **kwargs):
        print("preparing", flush=True)
        time.sleep(600)

    P._process = stuck
    P.prepare("folder", {source!r}, {out!r}, [16, 16], workers=1)
"""


@pytest.mark.slow  # ~20 s on 2 busy cores: two interpreters importing the data stack
def test_second_prepare_of_one_output_fails_at_once_and_a_killed_ones_lock_is_taken_over(tmp_path: Path) -> None:
    source = _synth(tmp_path / "raw")
    out = tmp_path / "prepared"
    child = start_child(SLOW_PREPARE.format(source=str(source), out=str(out)))
    args = ["data", "prepare", "--format", "folder", "--source", str(source), "--out", str(out), "--size", "16",
            "--workers", "1", "--params", str(tmp_path / "none.yaml")]
    try:
        wait_for(child, "preparing")
        start = time.monotonic()
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert time.monotonic() - start < 10
        assert f"pid {child.pid}" in result.output and f"prepared data output {out}" in result.output
        assert "Traceback" not in result.output and not out.exists()
    finally:
        kill9(child)
    assert [p.name for p in tmp_path.glob(".prepared.tmp-*")]  # the killed writer's half-written folder
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from sdm.data.manifest import read_manifest

    assert sum(read_manifest(out).counts.values()) == 6
    assert not list(tmp_path.glob(".prepared.tmp-*")) and not list(tmp_path.glob(".prepared.old-*"))


SLOW_TRAIN = """
    import time
    import sdm.train.launch as L
    from sdm.config import resolve

    def stuck(*args, **kwargs):
        print("training", flush=True)
        time.sleep(600)

    L.preflight = stuck
    cfg = resolve(preset="toy", params=None, overrides=["train.storage_path={storage}"])
    L.train(cfg, run_name="toy", local=True, log_mlflow=False)
"""


def test_second_train_of_one_run_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    child = start_child(SLOW_TRAIN.format(storage=storage))
    try:
        wait_for(child, "training")
        start = time.monotonic()
        result = CliRunner().invoke(app, ["train", "--run-name", "toy", "--local", "--no-mlflow", "--params",
                                          str(tmp_path / "none.yaml"), "--set", f"train.storage_path={storage}"])
        assert result.exit_code == 2, result.output
        assert time.monotonic() - start < 10
        assert f"training run 'toy' ({storage / 'toy'}) is in use by pid {child.pid}" in result.output
        assert not (storage / "toy").exists()  # the refused run wrote nothing
    finally:
        kill9(child)
    holder = json.loads((storage / ".toy.sdm-lock.json").read_text())  # the dead holder's stale record
    assert holder["pid"] == child.pid
    with lock_target(storage / "toy", "run"):  # taken over
        assert read_holder(storage / ".toy.sdm-lock")["pid"] != child.pid


SLOW_RETRAIN = """
    import time
    import flows.retrain as R

    def stuck():
        print("retraining", flush=True)
        time.sleep(600)

    R.get_run_logger = stuck
    R.retrain.fn(params_file={params!r})
"""


def test_second_retrain_of_one_project_fails_at_once(tmp_path: Path) -> None:
    from flows.retrain import PIPELINE_LOCK, retrain

    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    child = start_child(SLOW_RETRAIN.format(params=str(params)))
    try:
        wait_for(child, "retraining", timeout=120)
        with pytest.raises(LockBusyError, match=f"retrain pipeline of {tmp_path} is in use by pid {child.pid}"):
            retrain.fn(params_file=str(params))
        assert (tmp_path / PIPELINE_LOCK).exists()
    finally:
        kill9(child)
    with hold_lock(tmp_path / PIPELINE_LOCK, "pipeline"):  # free again after the SIGKILL
        pass
