"""A real Ray cluster of two nodes on this machine, started with ``ray start`` as a team would (session-scoped).

The head (``ray start --head``, 1 CPU, custom resource ``sdm_head``) and a second
node joined with ``ray start --address`` (1 CPU, ``sdm_node2``): two raylets,
each with its own resources, so a 2-worker run must put one worker on each.
Every port is a free one (two raylets on one host cannot share Ray's fixed
defaults), the temp folder is the test's own (short: Ray's unix socket paths
are limited to ~107 bytes), and token authentication uses a token made for the
session (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``), never ~/.ray/auth_token.

Each ``ray start`` runs in a new session, so its daemons (GCS, raylet, agents)
are one process group: stopping a node is ``killpg`` of that group, which is
how the tests stop the second node mid-run and how everything is stopped at
the end; nothing else on the machine is touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none is picked twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM the group, SIGKILL what is left after ``timeout``; returns when none of it runs."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_alive(pgid):
            return
    raise AssertionError(f"process group {pgid} still runs: {group_alive(pgid)}")


@dataclass
class RayNode:
    name: str
    pgid: int  # the `ray start` process's session: every daemon it started

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGKILL:  # a node lost: no goodbye to the GCS
            os.killpg(self.pgid, signal.SIGKILL)
        stop_group(self.pgid)


@dataclass
class Cluster:
    root: Path  # the test's own folder; Ray's temp folder is root / "ray"
    env: dict[str, str]  # what a client needs: RAY_ADDRESS, token auth, the session's RAY_TMPDIR
    address: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    def start(self, name: str, *args: str, timeout: float = 180) -> RayNode:
        """``ray start ARGS`` (own ports, temp folder, token): returns once the node is up."""
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
        cmd = [RAY, "start", *args, "--temp-dir", str(self.temp_dir), "--object-store-memory", str(100 * 2**20),
               "--disable-usage-stats"]
        for option, port in zip(ports, free_ports(len(ports)), strict=True):
            cmd += [option, str(port)]
        log = self.root / f"{name}.log"
        for attempt in (1, 2):
            with open(log, "w") as fh:
                proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            node = RayNode(name, proc.pid)
            self.nodes.append(node)
            if proc.wait(timeout=timeout) == 0:
                return node
            text = log.read_text()
            node.stop()
            self.nodes.remove(node)
            # Ray allows a raylet 30 s (hard-coded) to register: a loaded machine can miss that once.
            if attempt == 2 or "timed out during startup" not in text:
                raise AssertionError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
        raise AssertionError("unreachable")

    def node_ids(self) -> set[str]:
        """The alive nodes' ids, as a client of the cluster sees them (a short driver process)."""
        code = ("import json, ray; ray.init(logging_level='ERROR'); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return set(json.loads(proc.stdout.strip().splitlines()[-1]))

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def start_head(root: Path) -> Cluster:
    """The head (1 CPU, ``sdm_head``) under ``root``, with a token made for it."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cluster = Cluster(root, env)
    cluster.start("head", "--head", "--port", str(free_ports(1)[0]), "--num-cpus", "1",
                  "--resources", '{"sdm_head": 1}', "--include-dashboard=false")
    # The address `ray start --head` recorded (the host's IP, as the other nodes reach it).
    cluster.address = (cluster.temp_dir / "ray_current_cluster").read_text().strip()
    cluster.env["RAY_ADDRESS"] = cluster.address
    return cluster


def join_node2(cluster: Cluster) -> None:
    """A second raylet (1 CPU, ``sdm_node2``) joined with ``ray start --address``."""
    cluster.start("node2", "--address", cluster.address, "--num-cpus", "1", "--resources", '{"sdm_node2": 1}',
                  "--min-worker-port", "0", "--max-worker-port", "0")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Cluster]:
    """A running ``ray start --head`` cluster for the session (~20-60 s to start on a busy 2-core machine);
    ``two_node_cluster`` adds the second node to this same cluster."""
    root = Path(tempfile.mkdtemp(prefix="sdmrc-", dir="/tmp"))  # short: socket paths
    cluster = None
    try:
        cluster = start_head(root)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        left = [(n.name, group_alive(n.pgid)) for n in (cluster.nodes if cluster else []) if group_alive(n.pgid)]
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes still running: {left}"


@pytest.fixture(scope="session")
def two_node_cluster(ray_head: Cluster) -> Cluster:
    """``ray_head`` plus a second node (started once; a test that stops it does so last)."""
    if not any(n.name == "node2" for n in ray_head.nodes):
        join_node2(ray_head)
    return ray_head
