"""Deterministic ODE samplers for dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with sigma(t) = t)."""

from __future__ import annotations

import torch

from fewstep.core.denoiser import Cond, Denoiser, append_dims


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def _sig(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.device).expand(x.shape[0])


@torch.no_grad()
def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None, generator=None) -> torch.Tensor:
    """Euler's method in sigma; identical to DDIM (eta = 0) in EDM coordinates. NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _sig(sigmas[i], x), cond)
        x = x + to_d(x, _sig(sigmas[i], x), denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None, generator=None) -> torch.Tensor:
    """EDM Algorithm 1: Heun's 2nd-order step, Euler on the last step to sigma = 0. NFE = 2 (len(sigmas) - 1) - 1."""
    for i in range(len(sigmas) - 1):
        s, s_next = _sig(sigmas[i], x), sigmas[i + 1]
        d = to_d(x, s, denoiser(x, s, cond))
        x_next = x + d * (s_next - sigmas[i])
        if s_next > 0:  # Alg. 1 lines 9-11: correct with the slope at the end point
            d_next = to_d(x_next, _sig(s_next, x), denoiser(x_next, _sig(s_next, x), cond))
            x_next = x + (d + d_next) / 2 * (s_next - sigmas[i])
        x = x_next
    return x
