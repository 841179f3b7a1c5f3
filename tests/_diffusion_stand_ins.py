"""Small stand-in networks for the diffusion tests (the real U-Net is tested with them too, where it matters)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sdm.diffusion import GaussianDiffusion


class TinySpadeNet(nn.Module):
    """A tiny net with the SDMUNet signature: forward(x_t, t, segmap, spade_cache=None) -> [N, 6|3, H, W].

    Its modulation depends on the segmap only (like SPADE), so ``spade_cache``
    can precompute it. It records every forward call (batch size, whether a
    cache was used, whether any row had an all-zero segmap) to check how
    samplers call it.
    """

    def __init__(self, cond_channels: int, learn_sigma: bool = True, hidden: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, hidden, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.shared = nn.Conv2d(cond_channels, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.beta = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, 6 if learn_sigma else 3, 3, padding=1)
        self.calls: list[dict] = []
        self.cache_builds: list[int] = []

    def spade_cache(self, segmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cache_builds.append(segmap.shape[0])
        actv = torch.relu(self.shared(segmap))
        return self.gamma(actv), self.beta(actv)

    def forward(self, x_t, t, segmap, spade_cache=None):
        self.calls.append({
            "n": x_t.shape[0],
            "cached": spade_cache is not None,
            "null_rows": int((segmap.flatten(1).abs().sum(1) == 0).sum()),
            "t": t.tolist(),
        })
        if spade_cache is None:
            actv = torch.relu(self.shared(segmap))
            gamma, beta = self.gamma(actv), self.beta(actv)
        else:
            gamma, beta = spade_cache
        h = self.conv_in(x_t) + self.time(t.float().view(-1, 1) / 1000.0)[:, :, None, None]
        h = torch.nn.functional.group_norm(h, 1) * (1 + gamma) + beta
        return torch.tanh(self.conv_out(torch.nn.functional.silu(h)))


class GaussianDataModel(nn.Module):
    """The exact epsilon predictor for data x_0 ~ N(mu, std^2 I) under ``diffusion``'s schedule.

    x_t = a x_0 + s eps with a = sqrt(abar_t), s = sqrt(1 - abar_t), so
    E[eps | x_t] = s (x_t - a mu) / (a^2 std^2 + s^2). The variance channels
    output ``var_value`` (-1: the posterior variance). Ignores the segmap.
    """

    def __init__(self, diffusion: GaussianDiffusion, mu: float, std: float, var_value: float = -1.0) -> None:
        super().__init__()
        self.abar = diffusion.alphas_cumprod.clone()
        self.mu, self.std, self.var_value = mu, std, var_value

    def forward(self, x_t, t, segmap, spade_cache=None):
        abar = self.abar[t.long()].to(x_t.dtype).view(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        eps = s * (x_t - a * self.mu) / (a**2 * self.std**2 + s**2)
        return torch.cat([eps, torch.full_like(eps, self.var_value)], dim=1)

    def exact_ode_x0(self, x_T: torch.Tensor, t_first: int, t_last: int) -> torch.Tensor:
        """Where the probability-flow ODE from x_T at t_first ends, denoised (E[x_0 | x]) at t_last.

        Along the exact ODE, z = (x_t - a mu) / sqrt(a^2 std^2 + s^2) is constant.
        """
        def a_s(t: int) -> tuple[float, float]:
            abar = float(self.abar[t])
            return math.sqrt(abar), math.sqrt(1 - abar)

        a, s = a_s(t_first)
        z = (x_T.double() - a * self.mu) / math.sqrt(a**2 * self.std**2 + s**2)
        a0, s0 = a_s(t_last)
        return self.mu + z * a0 * self.std**2 / math.sqrt(a0**2 * self.std**2 + s0**2)


def random_segmap(n: int, classes: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """One-hot segmaps [n, classes, h, w] of random labels."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (n, h, w), generator=g)
    return torch.nn.functional.one_hot(label, classes).permute(0, 3, 1, 2).float()
