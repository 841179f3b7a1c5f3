"""``sdm sample`` meets the label maps users have: other sizes (--resize, --crop) and colour label images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sdm.cli import app
from sdm.cli.sample_inputs import MapOptions, read_label_inputs
from sdm.config import resolve
from sdm.data.synthetic import PALETTE, synthesize
from sdm.data.transforms import resize_pair
from sdm.errors import InputError
from sdm.label_images import centre_crop_box, colour_to_index, fit_to_size
from sdm.model import SDMUNet, save_checkpoint

SIZE = 16
CLASSES = len(PALETTE)  # the synthetic scenes' 12 classes


def _model_config(size: int = SIZE):
    return resolve(preset="toy", params=None, overrides=[
        f"model.image_size=[{size},{size}]", f"data.image_size=[{size},{size}]", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[8]", f"model.num_classes={CLASSES}", "model.spade_hidden=16",
    ])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw synthetic scenes at 64 px, written by the code behind `sdm data synth`."""
    return synthesize(tmp_path_factory.mktemp("raw") / "synthetic", n=3, size=64, seed=0, workers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _model_config()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "final", SDMUNet(cfg.model).state_dict(), cfg,
                           meta={"palette": PALETTE, "step": 1})


def _run(*args: str | Path):
    return CliRunner().invoke(app, ["sample", *map(str, args), "--params", "/nonexistent/params.yaml",
                                    "--no-progress", "--device", "cpu", "--sampler", "ddim", "--steps", "2"])


def _index(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_synthetic_64px_labels_resize_like_prepare(synth: Path) -> None:
    """--resize turns the raw 64 px scenes into what `sdm data prepare` makes of them at the model's size."""
    model = _model_config(32).model
    labels, instances = synth / "labels", synth / "instances"
    with pytest.raises(InputError, match=r"64x64 \(HxW\) but the model expects 32x32.*--resize"):
        read_label_inputs(labels, instances, model)
    got = read_label_inputs(labels, instances, model, MapOptions(resize=True))
    assert got.labels.shape == got.instances.shape == (3, 32, 32)
    for i, path in enumerate(got.paths):
        image = np.asarray(Image.open(synth / "images" / path.name).convert("RGB"))
        _, label, instance = resize_pair(image, _index(path), _index(instances / path.name), (32, 32))
        assert np.array_equal(got.labels[i], label)
        assert np.array_equal(got.instances[i], instance)


def test_sample_cli_resizes_synthetic_labels(checkpoint: Path, synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused = _run("--checkpoint", checkpoint, "--labels", synth / "labels", "--out", out)
    assert refused.exit_code == 2
    assert "scene_00000.png" in refused.output and "--resize" in refused.output
    result = _run("--checkpoint", checkpoint, "--labels", synth / "labels", "--instances", synth / "instances",
                  "--out", out, "--resize")
    assert result.exit_code == 0, result.output
    assert Image.open(out / "scene_00002.png").size == (SIZE, SIZE)


def test_other_aspect_is_refused_unless_crop(tmp_path: Path) -> None:
    model = _model_config().model
    wide = np.zeros((32, 48), np.uint8)
    wide[:, 8:40] = np.arange(32)[:, None] // 4 % CLASSES  # the centred 32x32 window: 8 stripes
    wide[:, :8] = wide[:, 40:] = 11
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.png")
    for options in (MapOptions(), MapOptions(resize=True)):
        with pytest.raises(InputError) as e:
            read_label_inputs(tmp_path / "wide.png", None, model, options)
        assert str(tmp_path / "wide.png") in str(e.value) and "32x48" in str(e.value)
        assert "16x16" in str(e.value)
    got = read_label_inputs(tmp_path / "wide.png", None, model, MapOptions(resize=True, crop=True)).labels[0]
    assert 11 not in got  # the side bands were cropped away
    assert np.array_equal(got, wide[::2, 8:40:2])  # then halved, nearest


def test_centre_crop_box_and_rounding() -> None:
    assert centre_crop_box((64, 64), (32, 32)) == (0, 0, 64, 64)
    assert centre_crop_box((32, 48), (16, 16)) == (0, 8, 32, 32)
    assert centre_crop_box((100, 40), (256, 512)) == (40, 0, 20, 40)  # taller than 1:2: top and bottom cut
    assert centre_crop_box((513, 1025), (256, 512)) == (0, 0, 513, 1025)  # within half a pixel: same aspect
    assert centre_crop_box((1023, 2048), (256, 512)) == (0, 1, 1023, 2046)
    enlarged = fit_to_size(np.array([[0, 1], [2, 3]]), (4, 4), crop=False, where="x", what="label")
    assert np.array_equal(enlarged, np.array([[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2))


def test_colour_label_image_maps_back_to_class_ids(synth: Path, tmp_path: Path) -> None:
    model = _model_config(64).model
    label = _index(synth / "labels" / "scene_00001.png")
    colours = np.asarray(PALETTE, np.uint8)[label]
    Image.fromarray(colours, mode="RGB").save(tmp_path / "rgb.png")
    rgba = np.concatenate([colours, np.full((*label.shape, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        got = read_label_inputs(tmp_path / name, None, model, MapOptions(palette=PALETTE)).labels[0]
        assert np.array_equal(got, label)
    # Without a palette in the checkpoint a colour image cannot be read: said, not guessed.
    with pytest.raises(InputError, match="carries no palette"):
        read_label_inputs(tmp_path / "rgb.png", None, model)


def test_colour_not_in_palette_names_file_colour_and_pixel(tmp_path: Path) -> None:
    model = _model_config().model
    colours = np.asarray(PALETTE, np.uint8)[np.zeros((SIZE, SIZE), np.int64)]
    colours[5, 7] = [1, 2, 3]  # row 5, column 7
    colours[9, 2] = [1, 2, 3]
    Image.fromarray(colours, mode="RGB").save(tmp_path / "bad.png")
    with pytest.raises(InputError) as e:
        read_label_inputs(tmp_path / "bad.png", None, model, MapOptions(palette=PALETTE))
    message = str(e.value)
    assert str(tmp_path / "bad.png") in message and "(1, 2, 3)" in message and "(x=7, y=5)" in message
    # A translucent pixel is refused, with its position.
    rgba = np.concatenate([np.asarray(PALETTE, np.uint8)[np.zeros((SIZE, SIZE), np.int64)],
                           np.full((SIZE, SIZE, 1), 255, np.uint8)], -1)
    rgba[3, 4, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    with pytest.raises(InputError, match=r"\(x=4, y=3\) is not opaque"):
        read_label_inputs(tmp_path / "clear.png", None, model, MapOptions(palette=PALETTE))


def test_palette_shared_by_two_classes_is_refused_where_used() -> None:
    palette = [[0, 0, 0], [0, 0, 0], [9, 9, 9]]  # Cityscapes' void classes share black
    assert np.array_equal(colour_to_index(np.full((2, 2, 3), 9, np.uint8), palette, "x"), np.full((2, 2), 2))
    with pytest.raises(InputError, match=r"classes \[0, 1\]"):
        colour_to_index(np.zeros((2, 2, 3), np.uint8), palette, "x")


def test_p_mode_png_is_an_index_map(tmp_path: Path) -> None:
    """A palette (P) PNG gives its palette indices as class ids; its colours are ignored."""
    model = _model_config().model
    ids = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % CLASSES).astype(np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([200, 100, 50] * 256)  # every index drawn in one colour: still 12 classes
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    got = read_label_inputs(tmp_path / "p.png", None, model, MapOptions(palette=PALETTE)).labels[0]
    assert np.array_equal(got, ids)


def test_instance_maps_must_be_single_channel(tmp_path: Path) -> None:
    model = _model_config().model
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), mode="L").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8), mode="RGB").save(tmp_path / "inst.png")
    with pytest.raises(InputError, match="mode RGB.*single-channel instance map"):
        read_label_inputs(tmp_path / "a.png", tmp_path / "inst.png", model, MapOptions(palette=PALETTE))
