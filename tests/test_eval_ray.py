"""Evaluation sampling on Ray workers: the same images and metrics as in one process, for any worker count."""

from __future__ import annotations

import json

import pytest
from _eval_helpers import make_checkpoint, make_prepared, tiny_config

from sdm.eval.ray_sampling import cluster_sampling, slices
from sdm.eval.runner import EvalRequest, run_evaluation


def test_slices_cut_on_batch_boundaries_and_cover_everything():
    assert slices(10, 4, 2) == [(0, 8), (8, 10)]
    assert slices(10, 4, 5) == [(0, 4), (4, 8), (8, 10)]  # no empty slices
    assert slices(16, 4, 3) == [(0, 8), (8, 12), (12, 16)]
    assert slices(0, 4, 2) == []
    for n, b, w in ((37, 8, 3), (5, 16, 4), (64, 8, 8)):
        cuts = slices(n, b, w)
        assert cuts[0][0] == 0 and cuts[-1][1] == n and all(a % b == 0 for a, _ in cuts)
        assert all(x[1] == y[0] for x, y in zip(cuts, cuts[1:], strict=False))


def test_pipelines_sample_on_the_cluster_when_there_is_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_sampling(1, False, 4, True) == (1, False)  # no cluster: in-process, as configured
    assert cluster_sampling(3, False, 4, True) == (3, False)  # configured: kept
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert cluster_sampling(1, False, 4, True) == (4, True)  # a cluster: spread like training
    assert cluster_sampling(3, False, 4, True) == (3, False)


@pytest.mark.slow
def test_two_ray_workers_write_the_same_images_and_metrics_as_one_process(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SDM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SDM_INCEPTION_WEIGHTS", raising=False)
    prepared = make_prepared(tmp_path / "data", n=20, val_fraction=0.5)  # 10 label maps x 2 repeats: 3 batches of 8
    cfg = tiny_config("evaluate.guidance_scales=[1.5]", "evaluate.min_kid_samples=4", "evaluate.kid_subsets=2",
                      "evaluate.segmenter.steps=5")
    ckpt = make_checkpoint(tmp_path / "ckpt", cfg)

    def evaluate(workers: int) -> tuple[dict, dict[str, bytes]]:
        out = tmp_path / f"eval-{workers}"
        run_evaluation(EvalRequest(checkpoint=ckpt, data=prepared, out=out, log_mlflow=False, workers=workers),
                       cfg, log=print)
        metrics = json.loads((out / "metrics.json").read_text())
        timing = {k for k in metrics if "seconds_per_image" in k}
        images = {str(p.relative_to(out)): p.read_bytes() for d in ("samples", "grids")
                  for p in sorted((out / d).rglob("*.png"))}
        return {k: v for k, v in metrics.items() if k not in timing}, images

    one, one_images = evaluate(1)
    two, two_images = evaluate(2)
    assert len([k for k in one_images if k.startswith("samples/")]) == 10 * 2  # 10 label maps x 2 repeats
    assert one_images == two_images
    assert one == two and "miou@1.5" in one and "kid@1.5" in one
