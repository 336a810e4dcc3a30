"""Deterministic ODE samplers for dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with sigma(t) = t)."""

from __future__ import annotations

import torch

from fewstep.core.cond import select
from fewstep.core.denoiser import SIGMA_INF, Cond, Denoiser, append_dims, as_sigma_batch
from fewstep.core.noise import SampleNoise


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def heun_step(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
              cond: Cond = None) -> torch.Tensor:
    """EDM Algorithm 1 lines 4-8: one Heun step from sigma to sigma_next, plain Euler when sigma_next = 0.

    From sigma >= SIGMA_INF (pure noise) the step is Euler too: a trapezoid over an infinite interval has no meaning
    (its error grows with sigma), while Euler from there is the exact limit "predict y, re-noise with the same n".
    """
    s = as_sigma_batch(sigma, x)
    d = to_d(x, s, denoiser(x, s, cond))
    x_next = x + d * (sigma_next - sigma)
    if sigma_next > 0 and sigma < SIGMA_INF:  # Alg. 1 lines 6-8: correct with the slope at the end point
        s_next = as_sigma_batch(sigma_next, x)
        d_next = to_d(x_next, s_next, denoiser(x_next, s_next, cond))
        x_next = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x_next


@torch.no_grad()
def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
          generator: SampleNoise | None = None) -> torch.Tensor:
    """Euler's method in sigma; identical to DDIM (eta = 0) in EDM coordinates. NFE = len(sigmas) - 1."""
    for i in range(len(sigmas) - 1):
        s = as_sigma_batch(sigmas[i], x)
        x = x + to_d(x, s, denoiser(x, s, cond)) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
         generator: SampleNoise | None = None) -> torch.Tensor:
    """EDM Algorithm 1: Heun's 2nd-order method, Euler on the last step to sigma = 0. NFE = 2 (len(sigmas) - 1) - 1."""
    for i in range(len(sigmas) - 1):
        x = heun_step(denoiser, x, sigmas[i], sigmas[i + 1], cond)
    return x


ODE_SOLVERS = ("euler", "heun")


def ode_step(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond: Cond = None,
             solver: str = "heun") -> torch.Tensor:
    """One Euler or Heun step per row, from sigma[b] to sigma_next[b]; rows ending at sigma_next = 0 take Euler.

    The training-time step of distillation (each row of a batch sits at its own noise level); for scalar
    sigmas it equals `heun_step` (or an Euler step), Euler from sigma >= SIGMA_INF included.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; use euler or heun")
    d = to_d(x, sigma, denoiser(x, sigma, cond))
    x_next = x + d * append_dims(sigma_next - sigma, x.ndim)
    rows = ((sigma_next > 0) & (sigma < SIGMA_INF)).nonzero()[:, 0]
    if solver == "euler" or len(rows) == 0:
        return x_next
    c = select(cond, rows)
    d_next = to_d(x_next[rows], sigma_next[rows], denoiser(x_next[rows], sigma_next[rows], c))
    corrected = x[rows] + (d[rows] + d_next) / 2 * append_dims(sigma_next[rows] - sigma[rows], x.ndim)
    return x_next.index_copy(0, rows, corrected)
