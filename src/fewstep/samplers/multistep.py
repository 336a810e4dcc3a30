"""DPM-Solver++ multistep samplers (Lu et al. 2022b) in EDM sigma space, where lambda = -log sigma.

With x = y + sigma n the exact solution of the ODE from sigma_i to sigma_{i+1} is
x_{i+1} = (sigma_{i+1} / sigma_i) x_i + int_{lambda_i}^{lambda_{i+1}} e^{lambda - lambda_{i+1}} D dlambda (the
data-prediction form of DPM-Solver++, divided by alpha); the samplers integrate a polynomial in lambda through the
denoised outputs of the last steps.
The step to sigma = 0 (h = inf) is first order: it returns the last denoised output. A step from sigma >= SIGMA_INF
(pure noise) has h = inf too: first order, and the next step's ratio r = h_prev / h is infinite, so no history
crosses it (the exact sigma -> inf limit, whatever finite number stands for infinity).
"""

from __future__ import annotations

import torch

from fewstep.core.denoiser import SIGMA_INF, Cond, Denoiser, as_sigma_batch
from fewstep.core.noise import SampleNoise


def log_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """lambda = -log sigma, and -inf at sigma >= SIGMA_INF (pure noise)."""
    return torch.where(sigmas >= SIGMA_INF, -torch.inf, -sigmas.log())


@torch.no_grad()
def dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
             generator: SampleNoise | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), first order on the first and the last step. NFE = len(sigmas) - 1."""
    lambdas = log_snr(sigmas)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, as_sigma_batch(sigmas[i], x), cond)
        h = lambdas[i + 1] - lambdas[i]
        d = denoised
        if old_denoised is not None and sigmas[i + 1] > 0:  # Alg. 2: D = (1 + 1/2r) m_i - 1/2r m_{i-1}, r = h_{i-1}/h_i
            r = (lambdas[i] - lambdas[i - 1]) / h
            d = denoised + (denoised - old_denoised) / (2 * r)
        x = sigmas[i + 1] / sigmas[i] * x - torch.expm1(-h) * d  # x_{i+1} = (sigma_{i+1}/sigma_i) x_i + (1 - e^-h) D
        old_denoised = denoised
    return x


@torch.no_grad()
def dpmpp_3m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
             generator: SampleNoise | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep, warming up with orders 1 and 2, first order to sigma = 0.

    The update is Lu et al.'s multistep third-order DPM-Solver++ (their code's multistep_dpm_solver_third_update, as in
    diffusers' DPMSolverMultistepScheduler with solver_order=3). NFE = len(sigmas) - 1.
    """
    lambdas = log_snr(sigmas)
    m: list[torch.Tensor] = []  # denoised outputs of the last three steps, newest first
    for i in range(len(sigmas) - 1):
        m = [denoiser(x, as_sigma_batch(sigmas[i], x), cond), *m[:2]]
        h = lambdas[i + 1] - lambdas[i]
        phi_1 = -torch.expm1(-h)  # 1 - e^-h
        x = sigmas[i + 1] / sigmas[i] * x + phi_1 * m[0]
        if sigmas[i + 1] == 0 or len(m) == 1:
            continue
        r0 = (lambdas[i] - lambdas[i - 1]) / h  # ratios of the previous step sizes to this one
        d1_0 = (m[0] - m[1]) / r0
        if len(m) == 2:  # second step: the 2M midpoint term
            x = x + phi_1 / 2 * d1_0
            continue
        r1 = (lambdas[i - 1] - lambdas[i - 2]) / h
        d1_1 = (m[1] - m[2]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)  # first and second divided differences of D in lambda
        d2 = (d1_0 - d1_1) / (r0 + r1)
        x = x + (1 - phi_1 / h) * d1 - ((h - phi_1) / h**2 - 0.5) * d2
    return x
