"""Unguarded inputs get limits and clear errors (issue 14 item 8): decompression bombs, files whose bytes are
not the format their name says, symlinks out of the source folder, NaN/inf in the config and in float flags.

Every bad input here is a real file (a crafted PNG header, a JPEG renamed .png, a symlink, a params.yaml)
or a real command line; each test checks the message names the file / key and that nothing was written.
"""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from _data_fixtures import make_folder
from _registry_helpers import make_checkpoint
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.config import resolve
from sdm.config.load import ConfigError
from sdm.data.prepare import prepare
from sdm.data.problems import DataProblemsError
from sdm.data.validate import validate

runner = CliRunner()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grayscale PNG whose IHDR claims ``width`` x ``height``, in ~100 bytes.

    Its IDAT holds a few rows of compressed zeros: decoding it would allocate width * height bytes
    (2.5 GB at 50000 x 50000) before finding the data short, which is what the header check prevents.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _jpeg_bytes(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _problems(report, kind: str) -> list:
    return [p for p in report.problems if p.kind == kind]


# --- decompression bombs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(50000, 50000), (10000, 10000)])
def test_a_png_claiming_a_huge_size_is_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    """50000 x 50000 is over PIL's own hard limit (its DecompressionBombError path); 10000 x 10000 (100 Mpx) is
    under it and only PIL's warning stood in the way before: both are refused by data.max_image_pixels."""
    make_folder(tmp_path / "src", n=4)
    label = tmp_path / "src" / "labels" / "img01.png"
    label.write_bytes(bomb_png(width, height))
    assert label.stat().st_size < 1000
    start = time.perf_counter()
    report = validate("folder", tmp_path / "src", workers=1)
    assert time.perf_counter() - start < 5  # nothing the size of the claimed image was allocated
    (problem,) = report.problems
    assert problem.kind == "unreadable_label" and problem.path == str(label)
    assert "above data.max_image_pixels = 67108864 (67.1 Mpx); refused before decoding" in problem.message
    assert (f"{width}x{height}" if width == 10000 else f"{width * height} px") in problem.message


def test_a_bomb_stops_prepare_and_nothing_is_written_or_it_is_skipped(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=4)
    image = tmp_path / "src" / "images" / "img00.png"
    image.write_bytes(bomb_png(50000, 50000))
    out = tmp_path / "prepared"
    with pytest.raises(DataProblemsError, match=r"img00\.png: the header says 2500000000 px"):
        prepare("folder", tmp_path / "src", out, [16, 16], on_error="fail", workers=1)
    # No output and no temp folder left (a writers' lock file beside the output may stay).
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".sdm-lock")] == ["src"]
    manifest = prepare("folder", tmp_path / "src", out, [16, 16], on_error="skip", workers=1)
    assert sum(manifest.counts.values()) == 3
    assert [s["id"] for s in manifest.skipped] == ["img00"]


def test_max_image_pixels_is_a_config_key_the_cli_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 x 16 = 256 px files against a limit of 255: every file over it, named, exit code 1 (a report)."""
    from sdm.cli import data_cmd

    make_folder(tmp_path / "src", n=2, instances=False)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(data_cmd.app, ["validate", "--format", "folder", "--source", "src", "--params", "none.yaml",
                                     "--set", "data.max_image_pixels=255"])
    assert r.exit_code == 1, r.output
    assert "images/img00.png: the header says 16x16 = 0.0 Mpx, above data.max_image_pixels = 255" in r.output
    r = runner.invoke(data_cmd.app, ["prepare", "--format", "folder", "--source", "src", "--out", "prep",
                                     "--params", "none.yaml", "--set", "data.max_image_pixels=256"])
    assert r.exit_code == 0, r.output  # the limit is inclusive: exactly 256 px passes
    assert resolve(params=None).data.max_image_pixels == 64 * 1024 * 1024


# --- formats opened by name ---------------------------------------------------------------------------------


def test_a_jpeg_renamed_png_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=4)
    label = tmp_path / "src" / "labels" / "img02.png"
    label.write_bytes(_jpeg_bytes())
    report = validate("folder", tmp_path / "src", workers=1)
    (problem,) = report.problems
    assert problem.path == str(label) and problem.kind == "unreadable_label"
    assert "the file is JPEG, not PNG as its extension '.png' says" in problem.message


def test_a_png_renamed_jpg_and_a_gif_renamed_png_are_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=4, instances=False)
    image = tmp_path / "src" / "images" / "img01.jpg"  # odd ids are JPEGs in the fixture
    image.write_bytes(_png_bytes(np.zeros((16, 16, 3), np.uint8)))
    gif = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(gif, format="GIF")
    label = tmp_path / "src" / "labels" / "img02.png"
    label.write_bytes(gif.getvalue())
    report = validate("folder", tmp_path / "src", workers=1)
    messages = {p.path: p.message for p in report.problems}
    assert "the file is PNG, not JPEG as its extension '.jpg' says" in messages[str(image)]
    assert "the file is GIF, not PNG" in messages[str(label)]
    assert len(report.problems) == 2


# --- symlinks leaving the source ----------------------------------------------------------------------------


def test_a_symlink_to_a_file_outside_the_source_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=4)
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes((tmp_path / "src" / "labels" / "img03.png").read_bytes())
    link = tmp_path / "src" / "labels" / "img03.png"
    link.unlink()
    link.symlink_to(secret)
    report = validate("folder", tmp_path / "src", workers=1)
    (problem,) = _problems(report, "symlink_outside")
    assert problem.path == str(link)
    assert f"a symbolic link to {secret}" in problem.message and str((tmp_path / "src").resolve()) in problem.message
    # A problem about the dataset, not one example: --on-error skip does not leave it out quietly.
    out = tmp_path / "prepared"
    with pytest.raises(DataProblemsError, match="symlink_outside"):
        prepare("folder", tmp_path / "src", out, [16, 16], on_error="skip", workers=1)
    assert not out.exists()


def test_a_linked_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=3, instances=False)
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "src" / "labels").rename(elsewhere)
    (tmp_path / "src" / "labels").symlink_to(elsewhere, target_is_directory=True)
    report = validate("folder", tmp_path / "src", workers=1)
    problems = _problems(report, "symlink_outside")
    assert len(problems) == 3
    assert all(p.path == str(tmp_path / "src" / "labels") and f"link to {elsewhere}" in p.message for p in problems)


def test_symlinks_inside_the_source_and_a_linked_source_are_fine(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", n=4)
    store = tmp_path / "src" / "store"
    store.mkdir()
    label = tmp_path / "src" / "labels" / "img01.png"
    label.rename(store / "img01.png")
    label.symlink_to(Path("..") / "store" / "img01.png")  # relative, inside
    linked_source = tmp_path / "data-link"
    linked_source.symlink_to(tmp_path / "src", target_is_directory=True)  # the source itself may be a link
    report = validate("folder", linked_source, workers=1)
    assert report.ok, str(report)
    assert report.examples == 4


# --- NaN / inf in the config and in float options -----------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("train.pretrain.lr=inf", "train.pretrain.lr"),
    ("sample.guidance_scale=nan", "sample.guidance_scale"),
    ("sample.eta=-.inf", "sample.eta"),
    ("evaluate.guidance_scales=1.5,NaN", "evaluate.guidance_scales[1]"),
    ("register.promotion.guards.miou=.nan", "register.promotion.guards.miou"),
])
def test_nan_and_inf_overrides_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: expected a finite number, got"):
        resolve(overrides=[override], params=None)


def test_a_params_yaml_with_nan_names_the_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"grad_clip": 1.0}}).replace("1.0", ".nan"))
    assert ".nan" in params.read_text()
    with pytest.raises(ConfigError, match=r"train.grad_clip: expected a finite number, got nan"):
        resolve(params=params)


def test_sample_guidance_nan_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "final")
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(labels / "a.png")
    out = tmp_path / "out"
    for flag, value, key in (("--guidance", "nan", "sample.guidance_scale"), ("--guidance", "inf",
                             "sample.guidance_scale"), ("--eta", "nan", "sample.eta")):
        r = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "--labels", str(labels), "--out", str(out),
                                "--params", str(tmp_path / "none.yaml"), "--device", "cpu", "--no-progress",
                                "--steps", "1", flag, value])
        assert r.exit_code == 2, r.output
        assert f"error: {key}: expected a finite number" in r.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "labels"]


def test_sample_refuses_a_bomb_label_and_a_jpeg_named_png_before_decoding(tmp_path: Path) -> None:
    """``sdm sample --labels``: the size comes from the header (it must be the model's), the decoder from the name."""
    checkpoint = make_checkpoint(tmp_path / "final")
    out = tmp_path / "out"
    cases = [("bomb.png", bomb_png(10000, 10000), "label map is 10000x10000 (HxW) but the model expects 8x8"),
             ("photo.png", _jpeg_bytes(8), "cannot read as an image")]
    for name, data, message in cases:
        labels = tmp_path / "labels" / name
        labels.parent.mkdir(exist_ok=True)
        labels.write_bytes(data)
        start = time.perf_counter()
        r = runner.invoke(app, ["sample", "--checkpoint", str(checkpoint), "--labels", str(labels), "--out", str(out),
                                "--params", str(tmp_path / "none.yaml"), "--device", "cpu", "--no-progress"])
        assert time.perf_counter() - start < 20
        assert r.exit_code == 2, r.output
        assert f"error: {labels}: {message}" in r.output
        labels.unlink()
    assert not out.exists()
