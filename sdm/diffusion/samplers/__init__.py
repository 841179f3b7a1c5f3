"""Samplers: each takes the (guided) denoiser as an argument and walks a respaced process from x_T to x_0."""

from sdm.diffusion.samplers.ddim import ddim_sample
from sdm.diffusion.samplers.ddpm import ddpm_sample
from sdm.diffusion.samplers.dpmpp import dpmpp_2m_sample, dpmpp_2m_sde_sample

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpmpp": dpmpp_2m_sample, "dpmpp-sde": dpmpp_2m_sde_sample}

__all__ = ["SAMPLERS", "ddim_sample", "ddpm_sample", "dpmpp_2m_sample", "dpmpp_2m_sde_sample"]
