"""The local default stays local: without RAY_ADDRESS, ``sdm train`` starts its own Ray cluster even when a
``ray start`` cluster runs on the machine and its pointer file (``$RAY_TMPDIR/ray/ray_current_cluster``) is
in place. A bare ``ray.init(num_cpus=...)`` follows that pointer, attaches, and fails with "When connecting
to an existing cluster, num_cpus and num_gpus must not be provided"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import TINY, make_prepared

from sdm.train.events import read_run_log

pytestmark = pytest.mark.slow

SDM = str(Path(sys.executable).parent / "sdm")


def test_sdm_train_without_ray_address_starts_its_own_cluster_next_to_a_running_one(
        ray_head, tmp_path):
    pointer = ray_head.temp_dir / "ray_current_cluster"
    assert pointer.read_text().strip() == ray_head.address  # `ray start` left it: a bare init follows it
    prepared = make_prepared(tmp_path / "data", n=8)
    # A user's shell: Ray's temp folder is the one `ray start` used, no RAY_ADDRESS, no token settings.
    env = {k: v for k, v in ray_head.env.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["RAY_TMPDIR"] = str(ray_head.root)
    sets = [*TINY, f"data.prepared={prepared}", f"train.storage_path={tmp_path / 'runs'}", "train.pretrain.steps=2",
            "train.finetune.steps=0", "train.batch_size=2"]
    proc = subprocess.run([SDM, "train", *[x for s in sets for x in ("--set", s)], "--run-name", "local",
                           "--workers", "1", "--no-mlflow"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "must not be provided" not in proc.stderr
    workers = [e for e in read_run_log(tmp_path / "runs" / "local") if e["event"] == "worker"]
    assert len(workers) == 1
    assert workers[0]["node_id"] not in ray_head.node_ids()  # its own cluster, not the running one
    assert pointer.read_text().strip() == ray_head.address  # the other cluster's pointer untouched
