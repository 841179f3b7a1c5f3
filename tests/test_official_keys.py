"""Official checkpoints: our module tree against the official key names and shapes (a JSON of facts read
off the official UNetModel for small configs), our outputs against the official model's outputs (same
weights, same inputs), and loading a state dict / .pt written like the release."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _official_parity import OUTPUTS_FIXTURE, config_of, official_keys, official_state, probe
from safetensors.torch import load_file

from sdm.conditioning import make_segmap
from sdm.config.schema import ModelConfig
from sdm.model import CheckpointError, SDMUNet
from sdm.official_checkpoint import load_official_checkpoint, official_to_ours

OFFICIAL = official_keys()
OUTPUTS = load_file(str(OUTPUTS_FIXTURE))
# Not bit-exact: the same maths in another float32 order (our attention is scaled_dot_product_attention, the
# official one two einsums with the scale split over q and k; the SPADE cache fuses a resolution's shared
# convs), so outputs differ by ~1e-6 of their scale (1.6e-6 at most when the fixture was written). A wrong
# key, layout or operation gives differences of order 1.
PARITY_RTOL = 1e-5


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


def official_output_difference(name: str, state: dict[str, torch.Tensor], cached: bool = True) -> list[float]:
    """max|ours - official| / max|official| of the plain (and the SPADE-cached) forward on the fixture's
    inputs, with ``state`` (official keys) converted and loaded into our SDMUNet."""
    config = config_of(OFFICIAL[name]["official_args"])
    model = load_official_checkpoint(state, config)
    x_t, t, expected = OUTPUTS[f"{name}/x_t"], OUTPUTS[f"{name}/t"], OUTPUTS[f"{name}/output"]
    instance = OUTPUTS.get(f"{name}/instance")
    segmap = make_segmap(OUTPUTS[f"{name}/label"].long(), None if instance is None else instance.long(), config)
    with torch.no_grad():
        outputs = [model(x_t, t, segmap)]
        if cached:
            outputs.append(model(x_t, t, segmap, spade_cache=model.spade_cache(segmap)))
    scale = expected.abs().max().item()
    return [(out - expected).abs().max().item() / scale for out in outputs]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_outputs_match_official_model(name: str) -> None:
    state = official_state(name, OFFICIAL[name]["keys"])
    assert torch.equal(probe(state), OUTPUTS[f"{name}/probe"]), (
        "torch's random generator no longer gives the weights the fixture was written with: rewrite "
        "tests/data/official_outputs_small.safetensors with benchmarks/parity_official.py")
    plain, cached = official_output_difference(name, state)
    assert plain <= PARITY_RTOL and cached <= PARITY_RTOL, (plain, cached)


# Pairs of official keys with the same shape: swapped, every key name and shape still fits.
SWAPS = [
    ("output_blocks.0.0.in_norm.mlp_gamma.weight", "output_blocks.0.0.in_norm.mlp_beta.weight"),
    ("middle_block.0.in_norm.mlp_shared.0.weight", "middle_block.0.out_norm.mlp_shared.0.weight"),
    ("input_blocks.4.1.qkv.weight", "input_blocks.5.1.qkv.weight"),
    ("input_blocks.1.0.in_layers.2.weight", "input_blocks.1.0.out_layers.3.weight"),
    ("time_embed.2.weight", "input_blocks.4.0.emb_layers.1.weight"),
]


@pytest.mark.parametrize(("a", "b"), SWAPS)
def test_output_parity_catches_swapped_weights(a: str, b: str) -> None:
    """The parity test compares numbers: two same-shape weights in each other's place make it fail."""
    name = "small-instances-updown"
    state = official_state(name, OFFICIAL[name]["keys"])
    assert state[a].shape == state[b].shape
    state[a], state[b] = state[b], state[a]
    # The plain forward only: the test above holds the cached one to the plain one's numbers.
    (plain,) = official_output_difference(name, state, cached=False)
    assert plain > 100 * PARITY_RTOL, plain


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
