"""Sampler registry: name -> sampler (denoiser, x, sigmas, cond, generator, **options) -> x and its NFE per steps."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

from fewstep.core.errors import UserError
from fewstep.samplers import multistep, ode, stochastic


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler, how many network evaluations it spends for `steps` = len(sigmas) - 1, and whether it draws noise."""

    fn: Callable
    nfe: Callable[[int], int]
    stochastic: bool = False


def one_per_step(steps: int) -> int:
    """NFE of a sampler with one denoiser call per step."""
    return steps


def plms_nfe(steps: int) -> int:
    """NFE of PLMS: one per step plus the warm-up's second call (none for a single step)."""
    return steps + 1 if steps > 1 else 1


def heun_nfe(steps: int) -> int:
    """NFE of Heun-type samplers: two calls per step, one on the last step to sigma = 0."""
    return 2 * steps - 1


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(ode.euler, one_per_step),
    "ddim": SamplerSpec(stochastic.ddim, one_per_step),  # deterministic at its default eta = 0
    "heun": SamplerSpec(ode.heun, heun_nfe),
    "dpmpp_2m": SamplerSpec(multistep.dpmpp_2m, one_per_step),
    "dpmpp_3m": SamplerSpec(multistep.dpmpp_3m, one_per_step),
    "plms": SamplerSpec(multistep.plms, plms_nfe),
    "euler_ancestral": SamplerSpec(stochastic.euler_ancestral, one_per_step, stochastic=True),
    "ddpm": SamplerSpec(stochastic.ddpm, one_per_step, stochastic=True),
    "edm_stochastic": SamplerSpec(stochastic.edm_stochastic, heun_nfe, stochastic=True),
    "consistency": SamplerSpec(stochastic.consistency, one_per_step, stochastic=True),
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


def sampler_options(name: str) -> list[str]:
    """The keyword options a sampler takes beyond (denoiser, x, sigmas, cond, generator)."""
    return list(inspect.signature(get_sampler(name).fn).parameters)[5:]


def check_sampler_options(name: str, options: Mapping[str, object]) -> None:
    """A one-line UserError for an option the sampler does not take, naming the samplers that do."""
    takes = sampler_options(name)
    for key in options:
        if key not in takes:
            others = sorted(s for s in SAMPLERS if key in sampler_options(s))
            raise UserError(f"sampler {name} takes no option {key!r}"
                            + (f" (it takes {', '.join(takes)})" if takes else "")
                            + (f"; use {' or '.join(others)}" if others else ""))
