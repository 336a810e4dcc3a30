"""Sampler registry: name -> function (denoiser, x, sigmas, cond, generator) -> x, with NFE per step count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fewstep.core.errors import UserError
from fewstep.samplers import ode


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and how many network evaluations it spends for a schedule of `steps` sigmas."""

    fn: Callable
    nfe: Callable[[int], int]
    stochastic: bool = False


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(ode.euler, lambda steps: steps),
    "ddim": SamplerSpec(ode.euler, lambda steps: steps),
    "heun": SamplerSpec(ode.heun, lambda steps: 2 * steps - 1),
}


def register(name: str, spec: SamplerSpec) -> None:
    """Add a sampler under `name`."""
    SAMPLERS[name] = spec


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by name, with a one-line error listing the choices."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}") from None
