"""Loading, presets, overrides and each configuration error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sdm.cli import app
from sdm.config import Config, ConfigError, available_presets, dump_yaml, resolve, write_resolved
from sdm.config.official import model_config_from_official_args

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_defaults_are_the_toy_preset() -> None:
    assert dataclasses.replace(resolve(preset="toy", params=None), preset="") == resolve(params=None)


def test_repo_params_yaml_loads_and_matches_toy() -> None:
    cfg = resolve(params=REPO / "params.yaml")
    assert cfg.model.num_classes == 12 and cfg.data.format == "folder"
    assert cfg.model == resolve(preset="toy", params=None).model


def test_presets_exist() -> None:
    assert {"toy", "ade20k", "cityscapes", "celebamask-hq", "coco-stuff"} <= set(available_presets())


def test_ade20k_preset_has_paper_settings() -> None:
    cfg = resolve(preset="ade20k", params=None)
    m = cfg.model
    assert m.image_size == [256, 256] and m.num_classes == 151 and not m.use_instance
    assert m.model_channels == 256 and m.num_res_blocks == 2 and m.num_head_channels == 64
    assert m.attention_resolutions == [32, 16, 8] and m.resblock_updown and m.use_scale_shift_norm
    assert m.learn_sigma and m.channel_mult == [1, 1, 2, 2, 4, 4]
    assert cfg.train.pretrain.lr == pytest.approx(1e-4) and cfg.train.finetune.lr == pytest.approx(2e-5)
    assert cfg.train.finetune.drop_rate == pytest.approx(0.2) and cfg.train.ema_rate == pytest.approx(0.9999)
    assert cfg.sample.guidance_scale == pytest.approx(1.5) and cfg.diffusion.steps == 1000


@pytest.mark.parametrize(
    ("preset", "size", "classes", "instance"),
    [
        ("cityscapes", [256, 512], 35, True),
        ("celebamask-hq", [256, 256], 19, True),
        ("coco-stuff", [256, 256], 183, True),
    ],
)
def test_other_presets(preset: str, size: list[int], classes: int, instance: bool) -> None:
    m = resolve(preset=preset, params=None).model
    assert (m.image_size, m.num_classes, m.use_instance) == (size, classes, instance)


def test_overrides_typed_and_nested() -> None:
    cfg = resolve(overrides=["train.pretrain.lr=1e-4", "model.attention_resolutions=16,8",
                             "train.use_gpu=true", "model.channel_mult=[1,2]"], params=None)
    assert cfg.train.pretrain.lr == pytest.approx(1e-4)
    assert cfg.model.attention_resolutions == [16, 8]
    assert cfg.train.use_gpu is True and cfg.model.channel_mult == [1.0, 2.0]


def test_an_unquoted_true_false_is_taken_as_written_by_a_string_choice() -> None:
    # YAML reads --set sample.compile=false as a boolean; the setting's choices are strings.
    sample = resolve(params=None, overrides=["sample.compile=false", "sample.channels_last=true"]).sample
    assert (sample.compile, sample.channels_last) == ("false", "true")
    with pytest.raises(ConfigError, match="sample.precision"):  # a boolean is still no precision
        resolve(params=None, overrides=["sample.precision=true"])


def test_override_beats_preset_beats_params(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  batch_size: 4\n  seed: 7\n")
    cfg = resolve(preset="ade20k", params=params)
    assert cfg.train.batch_size == 32 and cfg.train.seed == 7  # preset wins where it speaks
    cfg = resolve(preset="ade20k", overrides=["train.batch_size=2"], params=params)
    assert cfg.train.batch_size == 2


def test_unknown_key_names_path_and_closest() -> None:
    with pytest.raises(ConfigError, match=r"model\.nonexistent"):
        resolve(overrides=["model.nonexistent=1"], params=None)
    with pytest.raises(ConfigError, match=r"unknown key 'model\.num_clases'.*'num_classes'"):
        resolve(overrides=["model.num_clases=3"], params=None)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*'train'"):
        resolve(overrides=["trian.seed=1"], params=None)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("model.num_classes=abc", r"model\.num_classes: expected an integer, got 'abc'"),
        ("model.num_classes=0", r"model\.num_classes: 0 is below the minimum 1"),
        ("train.finetune.drop_rate=1.5", r"train\.finetune\.drop_rate: 1\.5 is above the maximum 1"),
        ("sample.sampler=euler", r"sample\.sampler: 'euler' is not one of"),
        ("train.use_gpu=maybe", r"train\.use_gpu: expected true/false"),
        ("data.image_size=[64]", r"data\.image_size: expected 2 values"),
    ],
)
def test_bad_values_name_path_and_value(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        resolve(overrides=[override], params=None)


def test_model_and_data_size_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.image_size"):
        resolve(overrides=["model.image_size=[64,64]", "data.image_size=[32,32]"], params=None)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  image_size: [64, 64]\n")
    with pytest.raises(ConfigError, match="model.image_size"):
        resolve(params=params)


def test_one_image_size_set_moves_both_as_size_does() -> None:
    """``--set data.image_size=64`` works where ``sdm data prepare --size 64`` does (issue 16)."""
    for text, want in (("data.image_size=64", [64, 64]), ("model.image_size=48x64", [48, 64]),
                       ("data.image_size=[64,128]", [64, 128])):
        cfg = resolve(overrides=[text], params=None)
        assert list(cfg.data.image_size) == list(cfg.model.image_size) == want, text


def test_yaml_syntax_error_gives_file_line_column(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  num_classes: 3\n  channel_mult: [1, 2\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=rf"{bad}:\d+:\d+: YAML syntax error"):
        resolve(params=bad)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'ade'.*ade20k"):
        resolve(preset="ade", params=None)


def test_from_official_args_defaults_and_flags() -> None:
    m = model_config_from_official_args({"image_size": "256", "num_channels": "256",
                                         "attention_resolutions": "32,16,8", "num_head_channels": "64",
                                         "resblock_updown": "True", "learn_sigma": "True",
                                         "num_classes": "151", "no_instance": "True"})
    assert m.channel_mult == [1, 1, 2, 2, 4, 4] and m.num_heads == 4 and m.num_res_blocks == 2
    assert m.out_channels == 6 and m.cond_channels == 151
    city = model_config_from_official_args({"image_size": 512, "dataset_mode": "cityscapes", "num_classes": 35})
    assert city.image_size == [256, 512] and city.use_instance and city.cond_channels == 36
    with pytest.raises(ConfigError, match="bogus"):
        model_config_from_official_args({"bogus": 1})


def test_write_resolved_round_trips(tmp_path: Path) -> None:
    cfg = resolve(preset="cityscapes", params=None)
    path = write_resolved(cfg, tmp_path)
    again = resolve(params=path)
    assert isinstance(again, Config) and again == cfg


def test_cli_show_preset_prints_paper_settings() -> None:
    res = runner.invoke(app, ["config", "show", "--preset", "ade20k", "--params", "/nonexistent.yaml"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["model"]["num_classes"] == 151 and shown["model"]["model_channels"] == 256


def test_cli_unknown_key_exits_nonzero() -> None:
    res = runner.invoke(app, ["config", "show", "--set", "model.nonexistent=1"])
    assert res.exit_code != 0
    assert "model.nonexistent" in res.output


def test_cli_bad_params_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [\n")
    res = runner.invoke(app, ["config", "show", "--params", str(bad)])
    assert res.exit_code == 2 and f"{bad}:" in res.output


def test_dump_is_valid_yaml() -> None:
    assert yaml.safe_load(dump_yaml(resolve(params=None)))["train"]["phases"] == ["pretrain", "finetune"]
