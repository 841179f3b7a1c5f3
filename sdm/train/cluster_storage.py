"""Can every node of a multi-node Ray cluster see the run's folders? Checked before training starts.

Every worker reads ``data.prepared`` and writes checkpoints under
``train.storage_path`` by path (absolute paths are sent to the workers), so
on a cluster of several machines both must be on a shared filesystem mounted
at the same path on each. A node that cannot see them would fail the run
mid-way (or worse, write checkpoints nobody else reads); this check finds it
first: the driver writes a marker file under ``train.storage_path``, and a
tiny Ray task pinned to each alive node looks for the marker and for
``data.prepared/manifest.json`` (same bytes), all within a bounded time.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.errors import InputError

# Seconds for every node's check together (scheduling a task on a busy node included).
CHECK_TIMEOUT_S = 60.0
MARKER_PREFIX = ".sdm-storage-check-"


class ClusterStorageError(InputError):
    """A node of the Ray cluster cannot see a folder every worker needs."""


@dataclass(frozen=True)
class Expect:
    """A file a node must see: its path, what for (the setting), and its sha256."""

    path: str
    setting: str
    sha256: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def node_sees(expected: Sequence[Expect]) -> list[str]:
    """On one node: the problems with ``expected`` ([] when each file is there with the same bytes)."""
    problems = []
    for e in expected:
        path = Path(e.path)
        try:
            same = _sha256(path) == e.sha256
        except OSError as err:
            problems.append(f"{e.setting}: cannot read {path} ({err.strerror or err})")
            continue
        if not same:
            problems.append(f"{e.setting}: {path} has other bytes there than on the driver (another filesystem "
                            f"mounted at the same path)")
    return problems


def is_local_path(path: str) -> bool:
    """A filesystem path (not ``s3://``, ``gs://``...)."""
    return "://" not in path


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent: where the marker can go without creating the run's folders."""
    while not path.is_dir():
        path = path.parent
    return path


def alive_nodes() -> list[dict[str, Any]]:
    """The connected cluster's alive nodes (``ray.nodes()`` entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _run_on_node_with_ray(node_ids: Sequence[str], expected: Sequence[Expect], timeout_s: float) -> dict[str, Any]:
    """``node_sees`` on each node (a 0-CPU task pinned to it); a node that did not answer maps to None."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_sees)
    refs = {node: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(expected)
            for node in node_ids}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    results: dict[str, Any] = {}
    for node, ref in refs.items():
        if ref not in done:
            ray.cancel(ref, force=True)
            results[node] = None
            continue
        try:
            results[node] = ray.get(ref)
        except Exception as e:  # the node died under the task
            results[node] = [f"the check failed there: {type(e).__name__}: {str(e).splitlines()[0][:200]}"]
    return results


def check_nodes_see(storage_path: str, prepared: str, nodes: Sequence[dict[str, Any]],
                    run: Callable[[Sequence[str], Sequence[Expect], float], dict[str, Any]] = _run_on_node_with_ray,
                    timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Each node in ``nodes`` sees ``storage_path`` (a marker written here) and ``prepared``'s manifest.json;
    a ClusterStorageError naming the node, the path and the setting when one does not. The marker is
    removed whatever happens."""
    folder = _existing_folder(Path(storage_path))
    marker = folder / f"{MARKER_PREFIX}{uuid.uuid4().hex}"
    token = uuid.uuid4().hex.encode()
    try:
        marker.write_bytes(token)
    except OSError as e:
        raise ClusterStorageError(f"train.storage_path={storage_path}: cannot write in {folder} "
                                  f"({e.strerror or e})") from None
    try:
        expected = [Expect(str(marker), f"train.storage_path={storage_path}", hashlib.sha256(token).hexdigest())]
        manifest = Path(prepared) / "manifest.json"
        if manifest.is_file():  # a missing one is preflight's own error, with the command that makes it
            expected.append(Expect(str(manifest), f"data.prepared={prepared}", _sha256(manifest)))
        by_id = {n["NodeID"]: n for n in nodes}
        results = run(list(by_id), expected, timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    failures = []
    for node_id, problems in results.items():
        where = f"node {node_id[:12]} ({by_id[node_id].get('NodeManagerAddress', '?')})"
        if problems is None:
            failures.append(f"{where}: did not answer the storage check within {timeout_s:g} s")
        failures.extend(f"{where}: {p}" for p in problems or [])
    if failures:
        raise ClusterStorageError(
            "every Ray worker reads data.prepared and writes train.storage_path by path, but "
            + "; ".join(failures) + ". On several machines put both on a shared filesystem mounted at the same "
            "path on every node (NFS, a cluster filesystem) and pass them with --set data.prepared=... "
            "--set train.storage_path=...")


def check_cluster_storage(storage_path: str, prepared: str, timeout_s: float = CHECK_TIMEOUT_S) -> int:
    """On a connected Ray cluster with more than one alive node, ``check_nodes_see`` for the local paths;
    returns the number of nodes checked (0: one node, or no local path to check)."""
    nodes = alive_nodes()
    if len(nodes) < 2 or not (is_local_path(storage_path) and is_local_path(prepared)):
        return 0
    check_nodes_see(storage_path, prepared, nodes, timeout_s=timeout_s)
    return len(nodes)


def cluster_preflight(storage_path: str, prepared: str) -> int:
    """With ``RAY_ADDRESS`` set: probe it (bounded), connect, check storage on every node, disconnect again
    if this call connected. Returns the number of nodes checked; 0 with no RAY_ADDRESS (a local cluster)."""
    from sdm.train.ray_address import probe_ray_address, ray_address

    address = ray_address()
    if address in ("", "local"):
        return 0
    import ray

    from sdm.train.ray_run import PROBE_TIMEOUT_S, ensure_ray

    # Probed here even when this process already holds a Ray connection (ensure_ray then keeps it): a
    # RAY_ADDRESS that does not answer is an error before anything is written, whatever ran before.
    probe_ray_address(address, PROBE_TIMEOUT_S)

    started = ensure_ray()
    try:
        return check_cluster_storage(storage_path, prepared)
    finally:
        if started:
            ray.shutdown()
