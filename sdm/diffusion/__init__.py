"""The diffusion process (with its respacing), its losses, classifier-free guidance and the samplers.

The process never owns the network: every function that needs it takes the model as an argument.
"""

from sdm.diffusion.gaussian import GaussianDiffusion, space_timesteps
from sdm.diffusion.guidance import GuidedDenoiser, classifier_free_guidance
from sdm.diffusion.samplers import SAMPLERS, draw_normal, sample_loop
from sdm.diffusion.schedule import cosine_betas, linear_betas, named_beta_schedule

__all__ = [
    "SAMPLERS", "GaussianDiffusion", "GuidedDenoiser", "classifier_free_guidance", "cosine_betas", "draw_normal",
    "linear_betas", "named_beta_schedule", "sample_loop", "space_timesteps",
]
