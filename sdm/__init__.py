"""sdm: semantic image synthesis diffusion models (SDM, arXiv 2207.00050) as a pipeline."""

__version__ = "0.1.0"
