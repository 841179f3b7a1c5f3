"""Training: ``train()`` runs (or resumes) a run on Ray Train workers or in this process.

The public names load on first use, so importing one of the modules
(e.g. ``sdm.train.checkpoint``) does not import the driver, Ray or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdm.train.launch import TrainResult, train
    from sdm.train.ray_run import TrainingFailed

__all__ = ["TrainResult", "TrainingFailed", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from sdm.train import launch

        return getattr(launch, name)
    if name == "TrainingFailed":
        from sdm.train.ray_run import TrainingFailed

        return TrainingFailed
    raise AttributeError(f"module 'sdm.train' has no attribute {name!r}")
