"""A command replaces only a folder it made: every writing command refuses a user's folder and its own inputs.

For each command with an output folder (data synth, data prepare, sample,
evaluate, evaluate train-segmenter, convert-official): a non-empty folder
without sdm's marker is refused (exit 2, the message names the folder, what
is in it and ``--overwrite``) and left byte for byte as it was; ``--overwrite``
never replaces the command's input, a folder holding it, the working
directory or a training run folder; a folder the same command made is
replaced (also one made before markers existed), and ``sample --out`` twice
leaves only the second set.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_helpers import make_checkpoint, tiny_config
from _process_helpers import tree_digest
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.output_folders import MARKER, PREPARED, SAMPLES, SYNTHETIC, made_by, read_marker


def run(tmp_path: Path, *args: str | Path):
    return CliRunner().invoke(app, [*map(str, args), "--params", str(tmp_path / "none.yaml")])


def user_folder(path: Path) -> dict[str, bytes]:
    """A folder a user filled: 7 files of their own (no marker)."""
    path.mkdir(parents=True)
    for i in range(6):
        (path / f"holiday_{i}.jpg").write_bytes(os.urandom(64))
    (path / "notes.txt").write_text("mine")
    return tree_digest(path)


def assert_refused(result, folder: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"{folder}" in result.output
    for w in words:
        assert w in result.output, result.output


def assert_refused_user_folder(result, folder: Path, before: dict[str, bytes]) -> None:
    assert_refused(result, folder, "not a folder sdm made", "holiday_0.jpg", "(7 entries)", "--overwrite")
    assert tree_digest(folder) == before  # untouched, byte for byte
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdm.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("raw") / "synthetic", n=6, size=32, seed=0, workers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "final", tiny_config())


def labels(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        label = rng.integers(0, 12, (4, 4)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        Image.fromarray(label, mode="L").save(folder / f"{name}.png")
    return folder


def test_synth_refuses_a_users_folder_and_replaces_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ADEChallengeData2016"  # `sdm data synth --preset ade20k` used to replace a download
    before = user_folder(out)
    synth = ["data", "synth", "--out", out, "--n", "2", "--size", "16", "--workers", "1"]
    assert_refused_user_folder(run(tmp_path, *synth), out, before)
    assert run(tmp_path, *synth, "--overwrite").exit_code == 0
    assert made_by(out) == SYNTHETIC and read_marker(out)["kind"] == SYNTHETIC
    assert not (out / "notes.txt").exists()
    # Its own output (also one without a marker, from before markers) is replaced without --overwrite.
    (out / MARKER).unlink()
    assert run(tmp_path, *synth, "--n", "3").exit_code == 0
    assert len(list((out / "images").iterdir())) == 3


def test_synth_marker_is_the_same_on_every_run(tmp_path: Path) -> None:
    # The folder is DVC-versioned by content: a time stamp in the marker would change its version every run.
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run(tmp_path, "data", "synth", "--out", out, "--n", "2", "--size", "16").exit_code == 0
    assert tree_digest(a) == tree_digest(b)


def test_prepare_refuses_a_users_folder_its_source_and_another_kind(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "prepared"
    before = user_folder(out)
    prep = ["data", "prepare", "--format", "folder", "--source", raw, "--size", "16", "--workers", "1"]
    assert_refused_user_folder(run(tmp_path, *prep, "--out", out), out, before)
    raw_before = tree_digest(raw)
    for target in (raw, raw.parent):  # the source, a folder holding it: never, --overwrite or not
        result = run(tmp_path, *prep, "--out", target, "--overwrite")
        assert_refused(result, target, f"this command's input {raw}")
    assert tree_digest(raw) == raw_before
    # Another kind of sdm output is not replaced without --overwrite either.
    other = tmp_path / "scenes"
    assert run(tmp_path, "data", "synth", "--out", other, "--n", "2", "--size", "16").exit_code == 0
    assert_refused(run(tmp_path, *prep, "--out", other), other, f"sdm's {SYNTHETIC} output, not {PREPARED}")
    # With --overwrite the user's folder is replaced by a complete prepared folder.
    assert run(tmp_path, *prep, "--out", out, "--overwrite").exit_code == 0
    assert made_by(out) == PREPARED and (out / "manifest.json").is_file() and not (out / "notes.txt").exists()


def test_prepare_replaces_its_own_output_also_from_before_markers(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "prepared"
    prep = ["data", "prepare", "--format", "folder", "--source", raw, "--out", out, "--workers", "1"]
    assert run(tmp_path, *prep, "--size", "16").exit_code == 0
    marker = read_marker(out)
    assert marker == {"kind": PREPARED, "source": str(raw), "sdm_version": marker["sdm_version"]}  # no stamp
    (out / MARKER).unlink()  # an older sdm's output: recognised by its manifest
    assert run(tmp_path, *prep, "--size", "24").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["image_size"] == [24, 24]


def test_a_damaged_marker_counts_as_none(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    before = user_folder(out)
    (out / MARKER).write_text(json.dumps({"kind": SAMPLES}))
    assert made_by(out) == SAMPLES
    data = bytearray((out / MARKER).read_bytes())
    data[2] ^= 0x01  # flip one bit of the "kind" key
    (out / MARKER).write_bytes(bytes(data))
    before = tree_digest(out)
    assert made_by(out) is None
    from sdm.output_folders import OutputFolderError, check_output_dir

    with pytest.raises(OutputFolderError, match="not a folder sdm made"):
        check_output_dir(out, SAMPLES)
    assert tree_digest(out) == before


def test_sample_replaces_never_merges_and_refuses_users_folders_and_inputs(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "samples"
    sample = ["sample", "--checkpoint", checkpoint, "--steps", "2", "--sampler", "ddim", "--no-progress",
              "--device", "cpu", "--out"]
    first = labels(tmp_path / "first", ["a", "b", "c"])
    second = labels(tmp_path / "second", ["x", "y"])
    assert run(tmp_path, *sample, out, "--labels", first).exit_code == 0
    result = run(tmp_path, *sample, out, "--labels", second)
    assert result.exit_code == 0, result.output
    # Only the second call's images: nothing of the first set is left beside them.
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.yaml", "grid.png", "x.png", "y.png"]
    marker = read_marker(out)
    assert marker["kind"] == SAMPLES and marker["source"] == str(checkpoint.resolve())
    assert marker["labels"] == str(second.resolve()) and marker["steps"] == 2 and "created" in marker

    mine = tmp_path / "photos"
    before = user_folder(mine)
    assert_refused_user_folder(run(tmp_path, *sample, mine, "--labels", second), mine, before)
    labels_before = tree_digest(second)
    for target, source in ((second, second), (tmp_path, second), (checkpoint.parent, checkpoint)):
        assert_refused(run(tmp_path, *sample, target, "--labels", second, "--overwrite"), target,
                       f"this command's input {source}")
    assert tree_digest(second) == labels_before and (checkpoint / "model.safetensors").is_file()


def test_no_output_replaces_the_working_directory(tmp_path: Path, checkpoint: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "work" / "project"  # ".." holds no input: only the working-directory rule refuses it
    before = user_folder(project)
    monkeypatch.chdir(project)
    lab = labels(tmp_path / "labels", ["a"])
    for out in (".", ".."):
        result = run(tmp_path, "sample", "--checkpoint", checkpoint, "--labels", lab, "--out", out, "--overwrite",
                     "--device", "cpu", "--no-progress")
        assert_refused(result, Path(out), "working directory")
    assert tree_digest(project) == before


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_sample_outputs_follow_the_umask(tmp_path: Path, checkpoint: Path, umask: int) -> None:
    out = tmp_path / "samples"
    lab = labels(tmp_path / "labels", ["a"])
    previous = os.umask(umask)
    try:
        result = run(tmp_path, "sample", "--checkpoint", checkpoint, "--labels", lab, "--out", out, "--steps", "2",
                     "--sampler", "ddim", "--device", "cpu", "--no-progress")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_evaluate_refuses_a_run_folder_even_with_overwrite(tmp_path: Path, checkpoint: Path) -> None:
    run_dir = checkpoint.parent
    ev = ["evaluate", "--checkpoint", checkpoint, "--data", tmp_path / "no-data", "--no-mlflow", "--device", "cpu"]
    before = tree_digest(run_dir)
    # Its own run folder: holds the checkpoint being evaluated.
    assert_refused(run(tmp_path, *ev, "--out", run_dir, "--overwrite"), run_dir, f"this command's input {checkpoint}")
    # Another run's folder (checkpoints, a log): never replaced.
    other = tmp_path / "runs" / "other"
    make_checkpoint(other / "final", tiny_config())
    (other / "train_log.jsonl").write_text("{}\n")
    other_before = tree_digest(other)
    assert_refused(run(tmp_path, *ev, "--out", other, "--overwrite"), other, "training run folder", "never")
    mine = tmp_path / "results"
    mine_before = user_folder(mine)
    assert_refused_user_folder(run(tmp_path, *ev, "--out", mine), mine, mine_before)
    assert tree_digest(run_dir) == before and tree_digest(other) == other_before


def test_train_segmenter_refuses_a_users_folder_and_the_data(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "seg"
    before = user_folder(out)
    seg = ["evaluate", "train-segmenter", "--data", raw, "--device", "cpu"]
    assert_refused_user_folder(run(tmp_path, *seg, "--out", out), out, before)
    assert_refused(run(tmp_path, *seg, "--out", raw.parent, "--overwrite"), raw.parent, f"this command's input {raw}")


def _official_pt(folder: Path) -> Path:
    from test_convert_official import official_pt

    folder.mkdir(parents=True)
    return official_pt(folder)[0]


def test_convert_official_refuses_a_users_folder_and_the_pt_folder(tmp_path: Path) -> None:
    from test_convert_official import FLAGS

    pt = _official_pt(tmp_path / "downloads")
    flags = [a for f in FLAGS for a in ("--official-flag", f)]
    out = tmp_path / "converted"
    before = user_folder(out)
    convert = ["convert-official", "--checkpoint", pt, *flags, "--out"]
    assert_refused_user_folder(run(tmp_path, *convert, out), out, before)
    pt_before = pt.read_bytes()
    assert_refused(run(tmp_path, *convert, pt.parent, "--overwrite"), pt.parent, f"this command's input {pt}")
    assert pt.read_bytes() == pt_before
    assert run(tmp_path, *convert, out, "--overwrite").exit_code == 0
    assert read_marker(out)["kind"] == "checkpoint" and read_marker(out)["source"] == str(pt.resolve())
    from sdm.model import load_checkpoint

    model, _ = load_checkpoint(out)  # the marker does not disturb the checkpoint
    assert isinstance(model, torch.nn.Module)
    assert run(tmp_path, *convert, out).exit_code == 0  # its own output: replaced without --overwrite
