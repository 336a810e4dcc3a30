"""A user's diffusers UNet2DModel with its DDPM/DDIM scheduler config, seen as an EDM denoiser."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fewstep.core.cond import labels_of
from fewstep.core.denoiser import Cond, SigmaRange, append_dims, as_sigma_batch
from fewstep.core.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# network(x_t, the scheduler's timestep, cond) -> its prediction, fed as the model's diffusers pipeline feeds it
TimestepCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def unet_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
    """A UNet2DModel's prediction, with the condition's class labels if it has any."""
    labels = labels_of(cond)
    return net(x_t, timestep, class_labels=None if labels is None else labels.to(x_t.device)).sample


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the VP model's x_t / sqrt(alpha_bar_t) = y + sigma_t n."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


class DiffusersVPDenoiser(nn.Module):
    """D(x, sigma) for a discrete-time VP network: x_t = x / sqrt(1 + sigma^2), t found from sigma exactly."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 sigma_data: float = 0.5, call: TimestepCall = unet_call):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unsupported prediction_type {prediction_type!r}; fewstep reads {', '.join(PREDICTION_TYPES)}")
        self.network = unet
        self.call = call
        self.prediction_type = prediction_type
        self.sigma_data = float(sigma_data)
        sigmas = discrete_sigmas(alphas_cumprod)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_range = SigmaRange(float(sigmas.min()), float(sigmas.max()), discrete=sigmas.float())
        self.num_classes = int(getattr(unet.config, "num_class_embeds", None) or 0)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep by linear interpolation in log(sigma); a trained sigma maps to its integer t exactly."""
        log_sigma = sigma.double().clamp(self.sigma_range.sigma_min, self.sigma_range.sigma_max).log()
        table = self.log_sigmas.to(sigma.device)
        hi = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        lo = hi - 1
        w = (log_sigma - table[lo]) / (table[hi] - table[lo])
        t = lo.double() + w
        return torch.where((t - t.round()).abs() < 1e-4, t.round(), t).float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim).double()
        sqrt_a, sqrt_1ma = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
        x_t = (x.double() * sqrt_a).float()
        out = self.call(self.network, x_t, self.sigma_to_t(sigma), cond).double()
        if self.prediction_type == "epsilon":
            denoised = x.double() - s * out
        elif self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) y  =>  y = sqrt(a) x_t - sqrt(1-a) v
            denoised = sqrt_a * x_t.double() - sqrt_1ma * out
        else:
            denoised = out
        return denoised.float()

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """A VP model starts from unit-variance x_T, i.e. std sqrt(1 + sigma^2) in EDM coordinates."""
        return (1 + torch.as_tensor(sigma_max) ** 2).sqrt()
