"""``sdm data synth|validate|prepare``: flags over config.data, clean errors, resolved config beside the output."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from _data_fixtures import make_folder, save
from typer.testing import CliRunner

from sdm.cli import data_cmd
from sdm.data.manifest import read_manifest

runner = CliRunner()


def run(*args):
    return runner.invoke(data_cmd.app, list(args), catch_exceptions=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder whose params.yaml asks for a small toy dataset."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"synth": {"n": 12, "size": 32, "seed": 1}}}))
    return tmp_path


def test_synth_then_prepare_with_no_flags_uses_config_data(project):
    r = run("synth")
    assert r.exit_code == 0, r.output
    assert "wrote 12 scenes of 32x32 px (seed 1) to data/raw/synthetic" in r.output
    assert len(list((project / "data/raw/synthetic/images").iterdir())) == 12
    r = run("prepare")
    assert r.exit_code == 0, r.output
    m = read_manifest(project / "data/prepared/synthetic")
    assert m.format == "folder" and m.num_classes == 12 and m.image_size == [32, 32]
    assert sum(m.counts.values()) == 12 and m.counts["val"] == 1
    written = yaml.safe_load((project / "data/prepared/synthetic/config.yaml").read_text())
    assert list(written) == ["data"] and written["data"]["synth"] == {"n": 12, "size": 32, "seed": 1}


def test_prepare_flags_override_config(project):
    src = project / "src"
    make_folder(src, n=4, size=16)
    r = run("prepare", "--format", "folder", "--source", str(src), "--out", "out", "--size", "8x12",
            "--set", "data.val_fraction=0.5")
    assert r.exit_code == 0, r.output
    m = read_manifest(project / "out")
    assert m.image_size == [8, 12] and m.counts == {"train": 2, "val": 2}
    cfg = yaml.safe_load((project / "out" / "config.yaml").read_text())["data"]
    assert cfg["source"] == str(src) and cfg["image_size"] == [8, 12] and cfg["val_fraction"] == 0.5


def test_dry_run_prints_and_writes_nothing(project):
    r = run("prepare", "--out", "somewhere", "--size", "16", "--dry-run")
    assert r.exit_code == 0
    assert yaml.safe_load(r.output)["data"]["image_size"] == [16, 16]
    assert not (project / "somewhere").exists()


def test_bad_source_fails_cleanly_or_skips(project):
    src = project / "src"
    make_folder(src, n=4, size=16)
    save(src / "labels" / "img01.png", np.full((16, 16), 9))
    r = run("prepare", "--source", str(src), "--out", "out", "--size", "16")
    assert r.exit_code == 2
    assert "label_out_of_range" in r.output and "img01.png" in r.output and "9 (256 px)" in r.output
    assert not (project / "out").exists()
    r = run("validate", "--source", str(src))
    assert r.exit_code == 1 and "4 example(s) paired" in r.output and "label_out_of_range x1" in r.output
    r = run("prepare", "--source", str(src), "--out", "out", "--size", "16", "--on-error", "skip")
    assert r.exit_code == 0 and "left out 1 example(s)" in r.output
    assert read_manifest(project / "out").skipped[0]["id"] == "img01"


def test_validate_ok_and_usage_errors(project):
    src = project / "src"
    make_folder(src, n=3, size=16)
    r = run("validate", "--source", str(src))
    assert r.exit_code == 0 and "no problems found" in r.output
    r = run("prepare", "--format", "pascal", "--source", str(src))
    assert r.exit_code == 2 and "unknown data format 'pascal'" in r.output
    r = run("prepare", "--size", "big")
    assert r.exit_code == 2 and "--size 'big'" in r.output
    r = run("prepare", "--on-error", "ignore")
    assert r.exit_code == 2 and "data.on_error" in r.output
    r = run("prepare", "--source", str(project / "missing"))
    assert r.exit_code == 2 and "source folder does not exist" in r.output


def test_data_group_is_registered():
    from sdm.cli import app

    r = runner.invoke(app, ["data", "--help"])
    assert r.exit_code == 0 and "prepare" in r.output and "version" in r.output
