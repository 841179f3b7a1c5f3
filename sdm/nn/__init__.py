"""The SPADE diffusion U-Net's building blocks, one idea per file.

- ``timestep``: sinusoidal timestep embedding.
- ``layers``: small shared pieces (GroupNorm of 32 groups, zero init, resampling, gradient checkpointing).
- ``resblock``: the encoder's plain ResBlock with scale-shift norm (+ up/down).
- ``spade``: SPADE GroupNorm (label-map conditioned modulation).
- ``spade_resblock``: the middle/decoder ResBlock whose norms are SPADE norms.
- ``attention``: multi-head self-attention over feature maps (scaled_dot_product_attention).
- ``spade_cache``: every SPADE gamma/beta for one label map, computed once for a sampling call.
- ``unet``: ``SDMUNet``, the whole network.
"""

from sdm.nn.spade_cache import SpadeCache
from sdm.nn.unet import ImageSizeError, SDMUNet

__all__ = ["ImageSizeError", "SDMUNet", "SpadeCache"]
