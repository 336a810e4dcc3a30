"""Draw samples: seeded per-sample noise, a schedule, a sampler, batching and exact NFE counting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fewstep.core import cond as conds
from fewstep.core.cond import CondLike
from fewstep.core.denoiser import CountingDenoiser, Denoiser
from fewstep.core.noise import SampleNoise
from fewstep.samplers.registry import get_sampler


@dataclass
class SampleResult:
    """Samples in data space, the labels they were conditioned on, and the measured NFE per sample."""

    samples: torch.Tensor
    labels: CondLike  # the condition samples were drawn with: class labels, a Cond, or None
    nfe: int


def initial_latents(denoiser: Denoiser, seed: int, indices: Sequence[int], shape: Sequence[int],
                    sigma_max: torch.Tensor, device: torch.device | str = "cpu",
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """The starting point x_T for samples `indices` of `seed`: unit noise times the model's initial noise scale.

    `noise` replaces the seeded unit noise (noise search moves it). The latents take the scale's dtype: a flow
    model's float64 scale at SIGMA_INF gives a float64 state.
    """
    noise = SampleNoise(seed, indices, device).randn(shape) if noise is None else noise.to(device)
    scale = denoiser.init_noise_scale(sigma_max).to(noise.device)
    return noise.to(scale.dtype) * scale


def generate(denoiser: Denoiser, shape: Sequence[int], n: int, sigmas: torch.Tensor, sampler: str = "heun",
             seed: int = 0, labels: CondLike = None, batch_size: int = 256,
             device: torch.device | str = "cpu", indices: Sequence[int] | None = None, options: dict | None = None,
             noise: torch.Tensor | None = None) -> SampleResult:
    """Sample n items of `shape`; item i uses noise seeded by (seed, indices[i]) (default i) whatever the batch size.

    `noise` [n, *shape] gives the items' initial unit noise instead (the sampler's own noise stays seeded).
    `options` go to the sampler (e.g. {"eta": 0.5} for euler_ancestral, {"S_churn": 10} for edm_stochastic).
    """
    spec = get_sampler(sampler)
    counter = CountingDenoiser(denoiser)
    sigmas = sigmas.to(device)
    indices = list(range(n) if indices is None else indices)
    if len(indices) != n:
        raise ValueError(f"generate: {len(indices)} noise indices for {n} items")
    out, nfe = [], 0
    for lo in range(0, n, batch_size):
        idx = indices[lo:lo + batch_size]
        x = initial_latents(denoiser, seed, idx, shape, sigmas[0], device,
                            None if noise is None else noise[lo:lo + len(idx)])
        cond = conds.to_device(conds.select(labels, slice(lo, lo + len(idx))), device)
        counter.reset()
        # sigma differences in the state's dtype: from SIGMA_INF a float32 sigma_next - sigma loses x_t's digits
        out.append(spec.fn(counter, x, sigmas.to(x.dtype), cond, SampleNoise(seed, idx, device, stream=1),
                           **(options or {})).float().cpu())
        nfe = counter.nfe
    return SampleResult(torch.cat(out), labels, nfe)
