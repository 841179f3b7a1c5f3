"""Official checkpoints: our module tree against the official key names and shapes (a JSON of facts read
off the official UNetModel for small configs), and loading a state dict / .pt written like the release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdm.config.schema import ModelConfig
from sdm.model import CheckpointError, SDMUNet, load_official_checkpoint
from sdm.official_checkpoint import official_to_ours

FIXTURE = Path(__file__).parent / "data" / "official_keys_small.json"
OFFICIAL = {k: v for k, v in json.loads(FIXTURE.read_text()).items() if not k.startswith("_")}


def config_of(args: dict) -> ModelConfig:
    return ModelConfig(image_size=args["size"], num_classes=args["num_classes"], use_instance=args["use_instance"],
                       model_channels=args["mc"], num_res_blocks=args["nrb"],
                       channel_mult=[float(m) for m in args["mult"]], attention_resolutions=args["attn"],
                       num_heads=args["heads"], num_head_channels=args["head_ch"], num_heads_upsample=args["heads_up"],
                       use_scale_shift_norm=args["ss"], resblock_updown=args["updown"], learn_sigma=args["sigma"],
                       spade_hidden=128)


def random_official_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in OFFICIAL[name]["keys"].items()}


def test_fixture_covers_the_variants() -> None:
    args = [v["official_args"] for v in OFFICIAL.values()]
    assert {a["updown"] for a in args} == {True, False}
    assert {a["use_instance"] for a in args} == {True, False}
    assert any(a["size"][0] != a["size"][1] for a in args)
    assert any(0.5 in a["mult"] for a in args)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_keys_and_shapes_match_official(name: str) -> None:
    official = {k: tuple(v) for k, v in OFFICIAL[name]["keys"].items()}
    renamed = official_to_ours({k: torch.empty(0) for k in official})
    ours = {k: tuple(v.shape) for k, v in SDMUNet(config_of(OFFICIAL[name]["official_args"])).state_dict().items()}
    assert set(renamed) == set(ours), (sorted(set(renamed) - set(ours))[:5], sorted(set(ours) - set(renamed))[:5])
    back = dict(zip(renamed, official, strict=True))
    for key, shape in ours.items():
        assert official[back[key]] == shape, key


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_load_official_state_dict_places_every_tensor(name: str) -> None:
    state = random_official_state(name)
    model = load_official_checkpoint(state, config_of(OFFICIAL[name]["official_args"]))
    assert not model.training
    loaded = model.state_dict()
    for key, value in official_to_ours(state).items():
        assert torch.equal(loaded[key], value), key
    # A forward with these weights runs and is not trivially zero.
    args = OFFICIAL[name]["official_args"]
    h, w = args["size"]
    cond = args["num_classes"] + args["use_instance"]
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w), torch.tensor([10]), torch.rand(1, cond, h, w))
    assert out.shape == (1, 6 if args["sigma"] else 3, h, w) and out.abs().max() > 0


def test_load_official_pt_file(tmp_path: Path) -> None:
    name = "small-resample-conv"
    state = random_official_state(name, seed=1)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    model = load_official_checkpoint(path, config_of(OFFICIAL[name]["official_args"]))
    assert torch.equal(model.out[2].weight, state["out.2.weight"])
    assert torch.equal(model.output_blocks[0][0].in_norm.mlp_gamma.weight,
                       state["output_blocks.0.0.in_norm.mlp_gamma.weight"])


class NotATensor:
    pass


def test_load_official_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights_only"):
        load_official_checkpoint(path, ModelConfig())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official_checkpoint(tmp_path / "missing.pt", ModelConfig())


def test_official_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    name = "small-instances-updown"
    args = OFFICIAL[name]["official_args"]
    path = tmp_path / "model.pt"
    torch.save(random_official_state(name), path)
    wrong_classes = config_of({**args, "num_classes": args["num_classes"] + 2})
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(path, wrong_classes)
    msg = str(e.value)
    assert str(path) in msg and "mlp_shared.0.weight" in msg
    assert "[128, 7, 3, 3]" in msg and "[128, 9, 3, 3]" in msg and "label-map channels" in msg
    with pytest.raises(CheckpointError, match="missing .* key"):
        load_official_checkpoint(path, config_of({**args, "nrb": 3}))
    state = random_official_state(name)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="'extra.weight'"):
        load_official_checkpoint(state, config_of(args))
