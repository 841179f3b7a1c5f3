"""Evaluation of semantic image synthesis: mIoU, FSD, feature diversity, FID, sweeps.

One idea per module: ``frechet`` (the Frechet distance), ``miou`` (confusion
matrix IoU), ``segmenter`` / ``segmenter_train`` / ``segmenter_cache`` (the
evaluation segmenter), ``inception`` / ``fid`` (FID with the standard
Inception-v3 features, from a local weights file), ``scoring`` (all metrics of
one set of samples, feature diversity among them), ``cache`` (where the caches
live, how they are keyed), ``runner`` (the ``sdm evaluate`` pipeline) and
``report`` (tables, plots, grids).
Submodules are imported where used so that ``import sdm.eval`` stays cheap.
"""
