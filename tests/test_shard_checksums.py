"""Prepared shards are checked against manifest.json's sha256 when data is loaded (issue 14 item 8).

The faults are real bytes on disk: one flipped byte in a shard (same size), a truncated shard, a shard
replaced by another split's. Each is an error naming the shard with the expected and actual hash, before
any row is read or any run folder is written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from _data_fixtures import make_folder

from sdm.config import resolve
from sdm.data import shards as shards_mod
from sdm.data.loader import PreparedDataset
from sdm.data.manifest import ManifestError, read_manifest, write_manifest
from sdm.data.prepare import prepare
from sdm.data.shards import ShardChecksumError, verify_shards


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    make_folder(root / "src", n=12)
    prepare("folder", root / "src", root / "prepared", [16, 16], workers=1)
    return root / "prepared"


@pytest.fixture
def prepared(pristine: Path, tmp_path: Path) -> Path:
    """A private copy (new inode and mtime, so this process's verified-shard cache does not cover it)."""
    out = tmp_path / "prepared"
    shutil.copytree(pristine, out)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_shards_load(prepared: Path) -> None:
    ds = PreparedDataset(prepared, "train")
    assert len(ds) == read_manifest(prepared).counts["train"]


def test_a_flipped_byte_is_an_error_naming_the_shard_and_both_hashes(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    entry = manifest.shard_entries("train")[0]
    shard = prepared / entry["file"]
    _flip(shard, shard.stat().st_size // 2)  # inside the PNG bytes: the Parquet file still parses
    actual = hashlib.sha256(shard.read_bytes()).hexdigest()
    before = _snapshot(prepared)
    with pytest.raises(ShardChecksumError) as err:
        PreparedDataset(prepared, "train")
    message = str(err.value)
    assert message.startswith(f"{shard}: sha256 {actual} differs from manifest.json's {entry['sha256']}")
    assert "dvc checkout" in message
    assert _snapshot(prepared) == before  # nothing written or "repaired"
    # The other split's shards are intact and still load.
    assert len(PreparedDataset(prepared, "val")) == manifest.counts["val"]


def test_a_truncated_shard_is_caught_by_its_size(prepared: Path) -> None:
    entry = read_manifest(prepared).shard_entries("val")[0]
    shard = prepared / entry["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardChecksumError, match=rf"{shard.name}: {entry['bytes'] - 10} bytes, but manifest.json "
                                                 rf"lists {entry['bytes']}"):
        PreparedDataset(prepared, "val")


def test_a_shard_swapped_for_another_is_caught(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    train, val = manifest.shard_entries("train")[0], manifest.shard_entries("val")[0]
    shutil.copy(prepared / train["file"], prepared / val["file"])
    # The sizes differ too; make the manifest agree on the size so the hash is what catches it.
    val["bytes"] = train["bytes"]
    write_manifest(manifest, prepared)
    with pytest.raises(ShardChecksumError, match=rf"{val['file']}: sha256 {train['sha256']} differs"):
        PreparedDataset(prepared, "val")


def test_a_manifest_entry_without_a_checksum_is_refused(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    del manifest.shards[0]["sha256"]
    write_manifest(manifest, prepared)
    with pytest.raises(ManifestError, match=r"manifest.json: shard 'train-00000.parquet' has no sha256"):
        PreparedDataset(prepared, "train")


def test_each_shard_is_hashed_once_per_process_and_again_when_it_changes(
    prepared: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Path] = []
    real = shards_mod._sha256
    monkeypatch.setattr(shards_mod, "_sha256", lambda p: calls.append(p) or real(p))
    PreparedDataset(prepared, "train")
    PreparedDataset(prepared, "train", augment=True)
    PreparedDataset(prepared, "train", rank=1, world_size=2)
    assert len(calls) == len(read_manifest(prepared).shard_entries("train"))
    shard = prepared / read_manifest(prepared).shard_entries("train")[0]["file"]
    _flip(shard, 200)  # a new mtime: the cached verdict no longer covers the file
    with pytest.raises(ShardChecksumError):
        PreparedDataset(prepared, "train")


def test_training_refuses_a_corrupt_shard_before_writing_a_run(prepared: Path, tmp_path: Path) -> None:
    from sdm.train.launch import train

    _flip(prepared / "val-00000.parquet", 300)
    cfg = resolve(params=None, overrides=[
        f"data.prepared={prepared}", "data.image_size=[16,16]", "model.image_size=[16,16]", "model.num_classes=5",
        f"train.storage_path={tmp_path / 'runs'}", "train.batch_size=2", "train.pretrain.steps=1",
        "train.phases=[pretrain]"])
    with pytest.raises(ShardChecksumError, match="val-00000.parquet: sha256"):
        train(cfg, run_name="r", local=True, log_mlflow=False, echo=lambda s: None)
    # No run folder and no config.yaml (a writers' lock file beside the run folder is all that may exist).
    runs = tmp_path / "runs"
    assert not runs.exists() or all(p.name.endswith(".sdm-lock") for p in runs.iterdir())
    with pytest.raises(ShardChecksumError):
        verify_shards(prepared, read_manifest(prepared))
