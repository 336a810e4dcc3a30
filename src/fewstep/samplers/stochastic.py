"""Stochastic samplers: noise enters only through the per-sample generator, so results do not depend on batch size."""

from __future__ import annotations

import torch

from fewstep.core.denoiser import Cond, Denoiser, as_sigma_batch
from fewstep.core.noise import SampleNoise
from fewstep.samplers.ode import euler, heun_step, to_d


def noise_like(generator: SampleNoise | None, x: torch.Tensor) -> torch.Tensor:
    """Unit Gaussian noise shaped like x, drawn per sample by `generator.randn_like`."""
    if generator is None:
        raise ValueError("a stochastic sampler needs a generator: pass fewstep.core.noise.SampleNoise(seed, indices)")
    return generator.randn_like(x)


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor,
                   eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up): a step to sigma_next as a deterministic step to sigma_down plus noise of std sigma_up."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up  # sigma_down^2 + sigma_up^2 = sigma_next^2


@torch.no_grad()
def euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
                    generator: SampleNoise | None = None, eta: float = 1.0) -> torch.Tensor:
    """Euler step to sigma_down, then noise up to sigma_next (k-diffusion); eta = 0 is Euler. NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        s = as_sigma_batch(sigmas[i], x)
        denoised = denoiser(x, s, cond)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, s, denoised) * (sigma_down - sigmas[i])
        if sigma_up > 0:
            x = x + noise_like(generator, x) * sigma_up
    return x


@torch.no_grad()
def ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
         generator: SampleNoise | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma space: eta = 0 is Euler; otherwise euler_ancestral with that eta.

    DDIM's noise sigma_t(eta)^2 = eta^2 (1 - a') / (1 - a) (1 - a / a'), divided by a' (sigma = sqrt((1 - a) / a)), is
    eta^2 s'^2 (s^2 - s'^2) / s^2: exactly ancestral_step's sigma_up. NFE = len(sigmas) - 1.
    """
    if eta == 0:
        return euler(denoiser, x, sigmas, cond, generator)
    return euler_ancestral(denoiser, x, sigmas, cond, generator, eta=eta)


@torch.no_grad()
def ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
         generator: SampleNoise | None = None) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020, eqs. 6-7, variance beta-tilde) in sigma space. NFE = len(sigmas) - 1.

    With x = y + sigma n the forward process is Brownian in sigma^2, so the posterior q(x_{s'} | x_s, y) is
    N(y + (s'/s)^2 (x - y), s'^2 (1 - s'^2/s^2)): an Euler step to s'^2/s plus that noise, i.e. euler_ancestral
    with eta = 1.
    """
    return euler_ancestral(denoiser, x, sigmas, cond, generator, eta=1.0)


@torch.no_grad()
def edm_stochastic(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
                   generator: SampleNoise | None = None, S_churn: float = 40.0, S_tmin: float = 0.05,
                   S_tmax: float = 50.0, S_noise: float = 1.003) -> torch.Tensor:
    """EDM Algorithm 2: raise sigma by gamma (churn), then a Heun step. NFE = 2 (len(sigmas) - 1) - 1.

    Defaults are EDM's ImageNet-64 settings (Table 5); S_churn = 0 is exactly `heun`.
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        gamma = min(S_churn / steps, 2**0.5 - 1) if S_tmin <= sigmas[i] <= S_tmax else 0.0  # Alg. 2 line 5
        sigma_hat = sigmas[i] * (1 + gamma)
        if gamma > 0:  # lines 4, 6-7: x_hat = x + sqrt(sigma_hat^2 - sigma^2) eps, eps ~ N(0, S_noise^2 I)
            x = x + (sigma_hat**2 - sigmas[i] ** 2).sqrt() * S_noise * noise_like(generator, x)
        x = heun_step(denoiser, x, sigma_hat, sigmas[i + 1], cond)  # lines 8-12
    return x


@torch.no_grad()
def consistency(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
                generator: SampleNoise | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): predict clean, re-noise. NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        x = denoiser(x, as_sigma_batch(sigmas[i], x), cond)  # x0 = D(x, sigma_i)
        if sigmas[i + 1] > 0:  # Alg. 1 re-noises by sqrt(s^2 - s_min^2) from x at s_min; D estimates y itself
            x = x + sigmas[i + 1] * noise_like(generator, x)
    return x
