"""Every hint an error gives is a command that works and overwrites nothing (issue 16).

Each test triggers the error as a user would (the real ``sdm`` CLI, in a temp working dir),
takes the suggested command out of the message (the text between backticks), runs it as
printed, and checks that it did what the hint promised and left every source untouched.
Also here: "did you mean" for every enumerated option, near-miss paths, one size setting,
``--on-error skip`` leaving nothing, and ``sdm pipeline serve`` without a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.data.manifest import read_manifest
from tests._data_fixtures import make_folder
from tests._registry_helpers import make_checkpoint, write_metrics

runner = CliRunner()


def sdm(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def suggested(output: str, starts: str = "sdm ") -> list[str]:
    """The commands a message suggests: backticked text starting with ``starts``."""
    return [c for c in re.findall(r"`([^`]+)`", output) if c.startswith(starts)]


def run_printed(command: str):
    """An ``sdm ...`` command as printed (one line, shell-quoted)."""
    argv = shlex.split(command)
    assert argv[0] == "sdm", command
    return sdm(*argv[1:])


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working dir (no params.yaml: the built-in toy settings), as a fresh checkout's root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_raw_synthetic_folder_as_data_points_at_its_prepared_form(workdir: Path) -> None:
    """``--data data/raw/synthetic`` once suggested ``sdm data prepare --out data/raw/synthetic`` (data loss)."""
    assert sdm("data", "synth", "--n", "8").exit_code == 0
    raw = workdir / "data" / "raw" / "synthetic"
    before = tree_digest(raw)
    r = sdm("evaluate", "train-segmenter", "--data", "data/raw/synthetic")
    assert r.exit_code == 2
    assert "data/raw/synthetic is the raw toy dataset" in r.output and "data/prepared/synthetic" in r.output
    commands = suggested(r.output)
    assert commands == ["sdm data prepare --preset toy"], r.output
    assert run_printed(commands[0]).exit_code == 0
    assert tree_digest(raw) == before  # the source is untouched
    assert read_manifest(workdir / "data" / "prepared" / "synthetic").counts["train"] > 0


def test_a_raw_folder_of_yours_is_prepared_into_a_folder_of_its_own(workdir: Path) -> None:
    make_folder(workdir / "mydata", size=32, n=6, num_classes=12)
    before = tree_digest(workdir / "mydata")
    r = sdm("evaluate", "train-segmenter", "--data", "mydata")
    assert r.exit_code == 2 and "looks like a raw dataset" in r.output
    [command] = suggested(r.output)
    assert "--out mydata-prepared" in command and "--source mydata" in command
    assert run_printed(command).exit_code == 0
    assert tree_digest(workdir / "mydata") == before
    assert read_manifest(workdir / "mydata-prepared").format == "folder"


def test_missing_preset_data_hint_keeps_the_preset(workdir: Path) -> None:
    """``sdm train --preset ade20k`` without the data: the hint is the ade20k command, never the toy one."""
    r = sdm("train", "--preset", "ade20k", "--run-name", "ade", "--local", "--set", "train.use_gpu=false")
    assert r.exit_code == 2, r.output
    commands = suggested(r.output)
    assert commands == ["sdm data prepare --preset ade20k"], r.output
    # Run as printed without the download: a clear error about the missing source, nothing written anywhere.
    r2 = run_printed(commands[0])
    assert r2.exit_code == 2 and "data/raw/ADEChallengeData2016" in r2.output
    assert not (workdir / "data").exists() or not any((workdir / "data").rglob("*.parquet"))


def test_missing_toy_data_hint_makes_it(workdir: Path) -> None:
    r = sdm("evaluate", "train-segmenter")
    assert r.exit_code == 2
    assert "`sdm data synth --preset toy` then `sdm data prepare --preset toy`" in r.output, r.output
    for command in suggested(r.output):
        assert run_printed(command).exit_code == 0, command
    assert read_manifest(workdir / "data" / "prepared" / "synthetic").counts["val"] > 0


def test_run_folder_as_checkpoint_names_its_final(workdir: Path) -> None:
    make_checkpoint(workdir / "runs" / "toy" / "final")
    (workdir / "labels").mkdir()
    for args in (["sample", "--checkpoint", "runs/toy", "--labels", "labels", "--out", "out"],
                 ["register", "--checkpoint", "runs/toy", "--metrics", "m.json"],
                 ["evaluate", "--checkpoint", "runs/toy", "--out", "ev"]):
        r = sdm(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "a training run folder, not a checkpoint" in r.output and "`--checkpoint runs/toy/final`" in r.output
    r = sdm("train", "--run-name", "ft", "--phase", "finetune", "--init-from", "runs/toy", "--local")
    assert r.exit_code == 2 and "`--init-from runs/toy/final`" in r.output, r.output
    # The fix as suggested works: an 8x8 label map of the tiny checkpoint's classes, sampled from runs/toy/final.
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(workdir / "labels" / "a.png")
    r = sdm("sample", "--checkpoint", "runs/toy/final", "--labels", "labels", "--out", "out", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (workdir / "out" / "a.png").is_file()


def test_metrics_folder_reads_its_metrics_json(workdir: Path, mlflow_uri: str) -> None:
    ckpt = make_checkpoint(workdir / "ckpt", meta={"mlflow_run_id": ""})
    (workdir / "eval").mkdir()
    r = sdm("register", "--checkpoint", str(ckpt), "--metrics", "eval", "--name", "hint-test")
    assert r.exit_code == 2 and "eval: a folder without metrics.json" in r.output
    write_metrics(workdir / "eval" / "metrics.json", {"fsd@1.5": 0.5, "miou@1.5": 0.4, "primary_metric": "fsd@1.5"})
    r = sdm("register", "--checkpoint", str(ckpt), "--metrics", "eval", "--name", "hint-test")
    assert r.exit_code == 0, r.output
    assert "registered hint-test version 1" in r.output


@pytest.mark.parametrize(("args", "wanted"), [
    (["data", "validate", "--format", "ade20", "--source", "x"], "did you mean 'ade20k'?"),
    (["config", "show", "--set", "sample.sampler=dpmpp_sde"], "did you mean 'dpmpp-sde'?"),
    (["config", "show", "--set", "data.on_error=skp"], "did you mean 'skip'?"),
    (["config", "show", "--preset", "ade20"], "did you mean 'ade20k'?"),
    (["convert-official", "--checkpoint", "x.pt", "--out", "o", "--official-flag", "num_channel=64"],
     "did you mean 'num_channels'?"),
    (["evaluate", "--checkpoint", "c", "--out", "o", "--steps-sweep", "dpmp:25"], "did you mean 'dpmpp'?"),
])
def test_enumerated_options_say_did_you_mean(workdir: Path, args: list[str], wanted: str) -> None:
    r = sdm(*args)
    assert r.exit_code == 2 and wanted in r.output, r.output


def test_set_image_size_works_where_size_does(workdir: Path) -> None:
    by_size = sdm("data", "prepare", "--size", "64", "--dry-run")
    by_set = sdm("data", "prepare", "--set", "data.image_size=64", "--dry-run")
    assert by_size.exit_code == by_set.exit_code == 0, by_set.output
    assert by_size.output == by_set.output


def test_on_error_skip_with_every_example_bad_is_an_error(workdir: Path) -> None:
    make_folder(workdir / "bad", size=16, n=3, num_classes=5)
    for label in (workdir / "bad" / "labels").glob("*.png"):
        label.write_bytes(b"not a png")  # every pair unreadable
    r = sdm("data", "prepare", "--format", "folder", "--source", "bad", "--out", "prep", "--size", "16",
            "--on-error", "skip")
    assert r.exit_code == 2, r.output
    assert "every one of the 3 example(s) is bad: nothing was written" in r.output
    assert not (workdir / "prep").exists()


def test_pipeline_serve_without_a_server_stops_at_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_yaml = Path(__file__).resolve().parents[1] / "prefect.yaml"
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    start = time.monotonic()
    r = sdm("pipeline", "serve", "--prefect-yaml", str(repo_yaml))
    assert r.exit_code == 2 and "`prefect server start`" in r.output, r.output
    # A server address where nothing listens (a port we bound and closed): refused at once, same advice.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Prefect reads its settings once per process: a fresh `sdm` process sees the new URL.
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    proc = subprocess.run([str(Path(sys.executable).parent / "sdm"), "pipeline", "serve", "--prefect-yaml",
                           str(repo_yaml)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no Prefect server answers" in proc.stderr, proc.stderr
    assert "`prefect server start`" in proc.stderr
    assert time.monotonic() - start < 60


def test_data_hints_hold_runnable_commands_only() -> None:
    """The hints print runnable commands: no ``<...>`` placeholder inside any backticked sdm command."""
    from sdm.data.manifest import _how_to_make

    for path in ("data/raw/synthetic", "data/prepared/ade20k", "data/prepared/synthetic", "/nonexistent/x", "sdm"):
        for command in suggested(_how_to_make(Path(path))):
            assert "<" not in command and "..." not in command, command
    assert json.dumps(suggested("`sdm a` and `ls`")) == '["sdm a"]'


def test_sample_guidance_is_one_scale_and_says_where_lists_go(workdir: Path) -> None:
    """``--guidance`` means the same in sample and evaluate; sample takes one and points at evaluate for a list."""
    r = sdm("sample", "--checkpoint", "c", "--labels", "l", "--out", "o", "--guidance", "1.0,1.5")
    assert r.exit_code == 2
    assert "sdm sample takes one guidance scale" in r.output and "`sdm evaluate --guidance 1.0,1.5`" in r.output
    r = sdm("sample", "--checkpoint", "c", "--labels", "l", "--out", "o", "--guidance", "strong")
    assert r.exit_code == 2 and "expected a number" in r.output
    make_checkpoint(workdir / "c")
    r = sdm("sample", "--checkpoint", "c", "--labels", "l", "--out", "o", "--guidance", "2", "--dry-run")
    assert r.exit_code == 0 and "guidance_scale: 2.0" in r.output, r.output
