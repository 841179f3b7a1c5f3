"""`sdm data prepare` on Ray tasks writes the same bytes (shards, row groups, manifest) as on one machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from _data_fixtures import make_folder
from typer.testing import CliRunner

from sdm.cli import data_cmd
from sdm.data import prepare_ray
from sdm.data.prepare import prepare
from sdm.data.prepare_ray import DEFAULT_CHUNK
from sdm.data.problems import DataProblemsError

pytestmark = pytest.mark.slow


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_ray_preparation_is_byte_identical_to_local(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative source: the Ray workers read it (and name it) as the driver does
    n = 3 * DEFAULT_CHUNK + 5  # several chunks, the last one partial
    make_folder(Path("raw"), size=24, n=n)
    (Path("raw") / "images" / "img03.png").write_bytes(b"not a png")  # one bad example, left out by both
    kw = dict(val_fraction=0.25, split_seed=0, on_error="skip", shard_mb=1)
    local = prepare("folder", "raw", "local", [16, 16], workers=2, **kw)
    on_ray = prepare("folder", "raw", "ray", [16, 16], ray=True, **kw)
    assert on_ray == local and len(local.skipped) == 1 and local.skipped[0]["path"].startswith("raw")
    assert sum(local.counts.values()) == n - 1
    a, b = files(tmp_path / "local"), files(tmp_path / "ray")
    assert a.keys() == b.keys() and any(k.endswith(".parquet") for k in a)
    assert a == b

    # Checking on Ray reports the same problems, and writes nothing, as checking locally.
    with pytest.raises(DataProblemsError) as local_err:
        prepare("folder", "raw", "local-fail", [16, 16], workers=2, val_fraction=0.25)
    with pytest.raises(DataProblemsError) as ray_err:
        prepare("folder", "raw", "ray-fail", [16, 16], ray=True, val_fraction=0.25)
    assert str(ray_err.value) == str(local_err.value) and "img03" in str(ray_err.value)
    assert not Path("ray-fail").exists()

    # The CLI: --ray, or RAY_ADDRESS (how the DVC stage's unchanged command runs on a cluster), takes the Ray path.
    calls = []
    real = prepare_ray.ray_map_items
    monkeypatch.setattr(prepare_ray, "ray_map_items", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    (tmp_path / "params.yaml").write_text("data:\n  val_fraction: 0.25\n  shard_mb: 1\n  on_error: skip\n")
    used = {}
    for out, flags, address in (("cli-ray", ["--ray"], None), ("cli-env", [], "127.0.0.1:1"), ("cli-local", [], None)):
        if address:  # the session's cluster is already connected: this address is never dialled
            monkeypatch.setenv("RAY_ADDRESS", address)
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        r = CliRunner().invoke(data_cmd.app, ["prepare", "--format", "folder", "--source", "raw", "--size", "16",
                                              "--out", out, *flags], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        used[out] = len(calls)
        calls.clear()
    assert used == {"cli-ray": 1, "cli-env": 1, "cli-local": 0}
    data = [{k: v for k, v in files(tmp_path / o).items() if k.endswith((".parquet", ".json"))}
            for o in ("cli-ray", "cli-env", "cli-local")]
    assert data[0] == data[1] == data[2] and "manifest.json" in data[0]
