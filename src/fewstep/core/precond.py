"""EDM preconditioning (Karras et al. 2022, Table 1): a plain network F becomes a denoiser D."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fewstep.core.cond import labels_or_null
from fewstep.core.denoiser import Cond, SigmaRange, append_dims, as_sigma_batch

NetworkCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class EDMPrecond(nn.Module):
    """D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise, labels), with c_noise = ln(sigma) / 4."""

    def __init__(self, net: nn.Module, call: NetworkCall, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, num_classes: int = 0):
        super().__init__()
        self.network = net
        self.call = call
        self.sigma_data = float(sigma_data)
        self.sigma_range = SigmaRange(float(sigma_min), float(sigma_max))
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)  # EDM eq. (7) and Table 1
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        x = x.float()
        f = self.call(self.network, c_in * x, c_noise, labels_or_null(cond, self.num_classes, x.shape[0], x.device))
        return (c_skip * x + c_out * f.float()).float()

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma_max)


class ConsistencyBoundary(nn.Module):
    """f(x, sigma) = c_skip x + (1 - c_skip) D(x, sigma): a consistency model with f(x, sigma_min) = x built in.

    c_skip = sd^2 / (u^2 + sd^2), u = scale (sigma - sigma_min) (Song et al. 2023, Appendix C, with LCM's time
    scaling). The weights sum to one, so f is the teacher's D wherever D is already consistent (D ~ x near sigma_min)
    and c_skip -> 0 away from the boundary.
    """

    def __init__(self, denoiser: nn.Module, sigma_min: float, scale: float = 10.0):
        super().__init__()
        self.inner = denoiser
        self.boundary_sigma, self.scale = float(sigma_min), float(scale)
        self.sigma_range, self.sigma_data = denoiser.sigma_range, denoiser.sigma_data
        self.num_classes = denoiser.num_classes

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x)
        u = append_dims(self.scale * (sigma - self.boundary_sigma).clamp(min=0), x.ndim)
        c_skip = self.sigma_data**2 / (u**2 + self.sigma_data**2)
        return c_skip * x.float() + (1 - c_skip) * self.inner(x, sigma, cond)

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return self.inner.init_noise_scale(sigma_max)
