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
from fewstep.samplers.ode import to_d


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


PLMS_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def plms(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Cond = None,
         generator: SampleNoise | None = None) -> torch.Tensor:
    """Pseudo linear multistep (Liu et al. 2022, PNDM eq. 12): Adams-Bashforth extrapolation (orders 1-4) of the
    noise estimate d = (x - D) / sigma, each step the DDIM transfer x + d (sigma_next - sigma) (their eq. 11), and
    a Heun first step in place of Runge-Kutta warm-up (diffusers' PNDMScheduler with skip_prk_steps).
    NFE = len(sigmas), or 1 for a single step."""
    ds: list[torch.Tensor] = []  # noise estimates of the last four steps, oldest first
    for i in range(len(sigmas) - 1):
        s = as_sigma_batch(sigmas[i], x)
        d = to_d(x, s, denoiser(x, s, cond))
        if i == 0 and len(sigmas) > 2:  # the warm-up: Heun's average of the slopes at both ends
            s_next, x_next = as_sigma_batch(sigmas[1], x), x + d * (sigmas[1] - sigmas[0])
            d_next = to_d(x_next, s_next, denoiser(x_next, s_next, cond))
            x, ds = x + (d + d_next) / 2 * (sigmas[1] - sigmas[0]), [d]
            continue
        ds = [*ds[-3:], d]
        x = x + sum(c * e for c, e in zip(PLMS_COEFFICIENTS[len(ds) - 1], reversed(ds))) * (sigmas[i + 1] - sigmas[i])
    return x
