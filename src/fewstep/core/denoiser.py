"""The denoiser protocol D(x, sigma, cond) -> estimate of clean y, in EDM's convention x = y + sigma * n."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from fewstep.core.cond import CondLike as Cond  # class labels [batch], a text/other Cond, or None (unconditional)

# sigma = infinity (pure noise: a flow model's t = 1, where diffusers' flow schedules start) as a finite number.
# t = sigma / (1 + sigma) = 1 - 1.5e-8 rounds to exactly 1 in float32 (and t * 1000 to exactly 1000), so a network
# sees the inputs diffusers gives it at t = 1; 2^26 is exact in float32. Samplers treat sigma >= SIGMA_INF as the
# limit sigma -> inf (no Heun correction, no multistep history across it); the state x = (1 + sigma) x_t it implies
# needs float64 to keep x_t's float32 digits through a step's subtraction (see samplers/generate.py).
SIGMA_INF = 2.0**26


@dataclass(frozen=True)
class SigmaRange:
    """The noise levels a denoiser is valid for; `discrete` holds the trained sigmas of a discrete-time model.

    `scheduler(steps)`, when set, gives the sigmas (ending in 0) of the diffusers scheduler the model ships with, as
    that scheduler computes them (a pipeline's spacing, a flow model's shifted timesteps): the schedule "scheduler".
    """

    sigma_min: float
    sigma_max: float
    discrete: torch.Tensor | None = None
    scheduler: Callable[[int], torch.Tensor] | None = None

    @property
    def is_discrete(self) -> bool:
        return self.discrete is not None


@runtime_checkable
class Denoiser(Protocol):
    """Anything that maps a noisy x, its per-sample sigma and a condition to an fp32 estimate of the clean data."""

    sigma_range: SigmaRange
    sigma_data: float
    num_classes: int  # 0 = no class labels; otherwise labels 0..num_classes-1 and num_classes means "no label"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor: ...

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """Std of the initial latent at sigma_max, multiplying unit Gaussian noise."""
        ...


def is_conditional(denoiser: Any) -> bool:
    """Whether a denoiser takes a condition: class labels, or text (a `text_conditioned` adapter)."""
    return bool(denoiser.num_classes) or bool(getattr(denoiser, "text_conditioned", False))


def backbone(obj: Any) -> nn.Module:
    """The network inside a model, denoiser or wrapper: follows `.denoiser` and `.inner` to an adapter's `.network`."""
    obj = getattr(obj, "denoiser", obj)
    while not hasattr(obj, "network") and hasattr(obj, "inner"):
        obj = obj.inner
    if not hasattr(obj, "network"):
        raise TypeError(f"{type(obj).__name__} holds no network")
    return obj.network


def as_sigma_batch(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or [batch] sigma to a fp32 tensor of shape [batch] on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape [batch]={x.shape[0]}, got {tuple(sigma.shape)}")
    return sigma


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a [batch] tensor with trailing singleton dims so it broadcasts against an ndim tensor."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


class CallableDenoiser:
    """Adapter for a plain function fn(x, sigma, cond) -> clean estimate (analytic denoisers, tests)."""

    def __init__(self, fn: Callable[..., torch.Tensor], sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, num_classes: int = 0):
        self.fn = fn
        self.sigma_range = SigmaRange(sigma_min, sigma_max)
        self.sigma_data = sigma_data
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        return self.fn(x, as_sigma_batch(sigma, x), cond).float()

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma_max)


class CountingDenoiser:
    """Wraps a denoiser and counts network evaluations: one per sample per call, so NFE is measured."""

    def __init__(self, denoiser: Denoiser):
        self.inner = denoiser
        self.calls = 0
        self.sample_evals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        self.calls += 1
        self.sample_evals += x.shape[0]
        return self.inner(x, sigma, cond)

    @property
    def nfe(self) -> int:
        """Sequential network evaluations so far (a batched guided pass is one; `sample_evals` counts rows)."""
        return self.calls

    def reset(self) -> None:
        """Zero the counters."""
        self.calls = 0
        self.sample_evals = 0
