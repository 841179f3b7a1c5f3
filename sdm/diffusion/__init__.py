"""The diffusion process, its losses, respacing, classifier-free guidance and the samplers.

The process never owns the network: every function that needs it takes the model as an argument.
"""

from sdm.diffusion.gaussian import GaussianDiffusion
from sdm.diffusion.guidance import classifier_free_guidance
from sdm.diffusion.respace import respace, space_timesteps
from sdm.diffusion.sample_loop import draw_normal, sample_loop
from sdm.diffusion.samplers import SAMPLERS
from sdm.diffusion.schedule import cosine_betas, linear_betas, named_beta_schedule

__all__ = [
    "SAMPLERS", "GaussianDiffusion", "classifier_free_guidance", "cosine_betas", "draw_normal", "linear_betas",
    "named_beta_schedule", "respace", "sample_loop", "space_timesteps",
]
