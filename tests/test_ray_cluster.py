"""``sdm train`` on a Ray cluster named by RAY_ADDRESS: the probe, the storage check, and a real two-node run.

Unit tests (seconds): an address nothing answers at is refused in a bounded time before anything is
written; a node that cannot see the run's folders is named. Slow: a head + a joined second node on this
machine (tests/_ray_cluster.py); ``sdm train --workers 2`` puts one worker on each and ends on the local
run's weights; the second node killed mid-run makes the run fail with a clear message (what is left, one
CPU, cannot hold two workers) instead of Ray's wait-forever.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import TINY, make_prepared, tiny_config

from sdm.train.cluster_storage import ClusterStorageError, Expect, check_nodes_see, node_sees
from sdm.train.events import read_run_log
from sdm.train.ray_address import RayAddressError, probe_ray_address, split_address

SDM = str(Path(sys.executable).parent / "sdm")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with ends: nothing listens there


# ---- unit --------------------------------------------------------------------------------------------------


def test_probe_accepts_a_listening_port_and_refuses_a_closed_one_in_bounded_time():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert "answers" in probe_ray_address(f"127.0.0.1:{port}", 2)
        assert "answers" in probe_ray_address(f"ray://127.0.0.1:{port}", 2)
    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(RayAddressError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: nothing answers"):
        probe_ray_address(f"127.0.0.1:{port}", 2)
    assert time.monotonic() - t0 < 3


def test_probe_names_bad_addresses():
    assert split_address("10.0.0.5") == ("10.0.0.5", 6379)
    assert split_address("ray://head") == ("head", 10001)
    with pytest.raises(RayAddressError, match=r"RAY_ADDRESS=http://x:1: not a Ray address"):
        split_address("http://x:1")
    with pytest.raises(RayAddressError, match=r"RAY_ADDRESS=head:port: expected HOST:PORT"):
        split_address("head:port")
    with pytest.raises(RayAddressError, match=r"RAY_ADDRESS=nohost\.invalid:6379: unknown host"):
        probe_ray_address("nohost.invalid:6379", 2)


def test_probe_auto_without_a_started_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(RayAddressError, match=r"RAY_ADDRESS=auto: no Ray cluster was started on this machine"):
        split_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6380\n")
    assert split_address("auto") == ("10.1.2.3", 6380)


def test_train_with_a_dead_ray_address_fails_fast_and_writes_nothing(tmp_path, monkeypatch):
    from sdm.train.launch import train

    prepared = make_prepared(tmp_path / "data", n=8)
    storage = tmp_path / "runs"
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(RayAddressError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: nothing answers"):
        train(tiny_config(prepared, storage), run_name="dead", workers=2, log_mlflow=False, echo=lambda s: None)
    assert time.monotonic() - t0 < 30  # the probe, not Ray's minutes of retries
    # No run folder, no config.yaml, no MLflow run: only the run's lock file (sdm.locks), released.
    assert [p.name for p in storage.iterdir()] == [".dead.sdm-lock"]


def _fake_nodes(blind: Path):
    """Two nodes: "A" is this machine; "B" has its own disk, where the same paths are under ``blind``."""

    def run(node_ids, expected, timeout_s):
        assert node_ids == ["A" * 40, "B" * 40]
        elsewhere = [Expect(str(blind / Path(e.path).relative_to("/")), e.setting, e.sha256) for e in expected]
        return {"A" * 40: node_sees(expected), "B" * 40: node_sees(elsewhere)}

    return [{"NodeID": "A" * 40, "NodeManagerAddress": "10.0.0.1"},
            {"NodeID": "B" * 40, "NodeManagerAddress": "10.0.0.2"}], run


def test_storage_check_names_the_node_that_cannot_see_the_paths(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    storage = tmp_path / "runs"  # not made yet: the marker goes in its parent
    nodes, run = _fake_nodes(tmp_path / "node-b-disk")
    with pytest.raises(ClusterStorageError) as e:
        check_nodes_see(str(storage), str(prepared), nodes, run=run)
    text = str(e.value)
    assert f"node BBBBBBBBBBBB (10.0.0.2): train.storage_path={storage}: cannot read" in text
    assert f"data.prepared={prepared}: cannot read" in text and "shared filesystem" in text
    assert "AAAA" not in text  # the driver's own node sees both
    assert not list(tmp_path.glob(".sdm-storage-check-*")) and not storage.exists()  # nothing left behind
    # Node B with a copy of its own (another filesystem at the same path): other bytes, also refused.
    copy = tmp_path / "node-b-disk" / prepared.relative_to("/")
    copy.mkdir(parents=True)
    (copy / "manifest.json").write_text('{"other": 1}')
    with pytest.raises(ClusterStorageError, match="has other bytes there than on the driver"):
        check_nodes_see(str(storage), str(prepared), nodes, run=run)


def test_storage_check_passes_when_every_node_sees_the_paths(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    seen = []

    def run(node_ids, expected, timeout_s):
        seen.extend(e.setting for e in expected)
        return {n: node_sees(expected) for n in node_ids}

    check_nodes_see(str(tmp_path), str(prepared), [{"NodeID": "A" * 40}, {"NodeID": "B" * 40}], run=run)
    assert seen == [f"train.storage_path={tmp_path}", f"data.prepared={prepared}"]


# ---- a real two-node cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("ray-cluster"))


def _sets(*extra: str) -> list[str]:
    return [x for s in (*TINY, *extra) for x in ("--set", s)]


def _train_cmd(prepared: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return [SDM, "train", *_sets(f"data.prepared={prepared}", f"train.storage_path={storage}", *extra),
            "--run-name", name, "--workers", "2", "--no-mlflow"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _workers(run_dir: Path) -> dict[int, str]:
    return {e["rank"]: e["node_id"] for e in read_run_log(run_dir) if e["event"] == "worker"}


@pytest.mark.slow
def test_two_node_run_puts_a_worker_on_each_node_and_ends_on_the_local_weights(
        two_node_cluster, prepared, tmp_path, ray_cluster):
    from sdm.train.launch import train

    storage = tmp_path / "runs"
    proc = subprocess.run(_train_cmd(prepared, storage, "two"), env=two_node_cluster.env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    placed = _workers(storage / "two")
    assert sorted(placed) == [0, 1] and len(set(placed.values())) == 2, placed  # one worker per node
    # The same settings on this process's local cluster: the same weights, bit for bit.
    local = train(tiny_config(prepared, tmp_path / "local-runs"), run_name="two", workers=2, log_mlflow=False,
                  echo=lambda s: None)
    assert _sha256(storage / "two" / "final" / "ema.safetensors") == _sha256(local.final_dir / "ema.safetensors")
    assert set(placed.values()) == two_node_cluster.node_ids()


@pytest.mark.slow
def test_losing_a_node_mid_run_fails_with_a_clear_message_and_keeps_the_checkpoints(
        two_node_cluster, prepared, tmp_path):
    # Run last in this module: the second node is gone afterwards. Ray tries to place the group 3 times,
    # 5 s each here (60 s by default).
    storage = tmp_path / "runs"
    env = {**two_node_cluster.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"}
    proc = subprocess.Popen(_train_cmd(prepared, storage, "lost", "train.pretrain.steps=200"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "pretrain 3/200: checkpoint" in line:
                break
        else:
            raise AssertionError(f"no checkpoint before exit:\n{proc.stderr.read() if proc.stderr else ''}")
        node2 = next(n for n in two_node_cluster.nodes if n.name == "node2")
        node2.stop(signal.SIGKILL)  # the node is lost: raylet, agents and its worker, no goodbye
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out[-2000:] + err[-3000:]
    assert time.monotonic() - t0 < 200
    assert ("error: Ray could not place the run's 2 workers x 1 CPU (2 CPUs) in 3 tries of 5 s "
            "(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S): the cluster now has 1 CPUs on 1 alive node(s)") in err, err
    assert "rerun the same command once the cluster has room again" in err
    assert (storage / "lost" / "checkpoint-pretrain-0000003" / "train_state.json").exists()
