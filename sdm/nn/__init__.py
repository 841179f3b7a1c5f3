"""The SPADE diffusion U-Net's building blocks, one idea per file.

- ``layers``: small shared pieces (GroupNorm of 32 groups, zero init, resampling, gradient checkpointing).
- ``resblock``: the encoder's plain ResBlock with scale-shift norm (+ up/down).
- ``spade``: SPADE GroupNorm (label-map conditioned modulation) and ``SpadeCache``: every SPADE
  gamma/beta for one label map, computed once for a sampling call.
- ``spade_resblock``: the middle/decoder ResBlock whose norms are SPADE norms.
- ``attention``: multi-head self-attention over feature maps (scaled_dot_product_attention).
- ``unet``: ``SDMUNet``, the whole network (with its sinusoidal timestep embedding).
"""

from sdm.nn.spade import SpadeCache
from sdm.nn.unet import ImageSizeError, SDMUNet

__all__ = ["ImageSizeError", "SDMUNet", "SpadeCache"]
