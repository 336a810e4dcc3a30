"""Sigma schedules: each returns a decreasing 1-D tensor of sigmas ending in 0 (samplers never choose them)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fewstep.core.denoiser import SigmaRange
from fewstep.core.errors import UserError


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Append the final sigma = 0."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. (5): sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho).float()


def karras_trailing(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras spacing over n + 1 knots with the last (sigma_min) replaced by 0, so every one of n steps does work.

    This is the grid of few-step students: n = 1 is [sigma_max, 0]; karras_trailing(2n) contains karras_trailing(n)
    at its even indices, which is what progressive distillation's two-teacher-steps-per-student-step needs.
    """
    return torch.cat([karras(n + 1, sigma_min, sigma_max, rho)[:n], torch.zeros(1)])


def loglinear(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log(sigma)."""
    if n == 1:
        return append_zero(torch.tensor([sigma_max]))
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp().float())


def discrete_uniform(n: int, discrete_sigmas: torch.Tensor, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """Sigmas at timesteps evenly spaced over a discrete model's training steps, as diffusers' schedulers space them."""
    num_train = len(discrete_sigmas)
    if spacing == "leading":  # DDIMScheduler default: t = i * (T // n) + offset, descending
        timesteps = (torch.arange(n) * (num_train // n)).flip(0) + steps_offset
    elif spacing == "trailing":  # numpy, as diffusers computes it: its float rounding decides the .5 ties
        timesteps = torch.from_numpy(np.arange(num_train, 0, -num_train / n).round()).long() - 1
    elif spacing == "linspace":
        timesteps = torch.from_numpy(np.linspace(0, num_train - 1, n).round()).long().flip(0)
    else:
        raise UserError(f"unknown timestep spacing {spacing!r}; use leading, trailing or linspace")
    return append_zero(discrete_sigmas.double()[timesteps].float())


def explicit(sigmas: Sequence[float]) -> torch.Tensor:
    """An explicit decreasing list of sigmas (searched or distilled schedules); a final 0 is appended if missing."""
    try:
        s = torch.as_tensor(list(sigmas), dtype=torch.float32)
    except (TypeError, ValueError):
        raise UserError("a sigma schedule must be a list of numbers") from None
    if s.ndim != 1 or len(s) == 0 or not s.isfinite().all() or (s < 0).any() or (s[1:] >= s[:-1]).any():
        raise UserError("a sigma schedule must be a non-empty, strictly decreasing list of finite, non-negative numbers")
    return s if s[-1] == 0 else append_zero(s)


SCHEDULES = ("karras", "karras_trailing", "loglinear", "uniform", "trailing", "scheduler")
# the options each schedule takes (make_schedule's keywords)
SCHEDULE_OPTIONS = {"karras": ("sigma_min", "sigma_max", "rho"), "karras_trailing": ("sigma_min", "sigma_max", "rho"),
                    "loglinear": ("sigma_min", "sigma_max"), "uniform": ("spacing",), "trailing": (),
                    "scheduler": ()}


def check_schedule_options(name: str, options: dict) -> None:
    """A one-line UserError for an option the schedule does not take (a schedule file takes none)."""
    takes = SCHEDULE_OPTIONS.get(name, ())
    for key in options:
        if key not in takes:
            others = [s for s, keys in SCHEDULE_OPTIONS.items() if key in keys]
            raise UserError(f"schedule {name} takes no option {key!r}"
                            + (f"; use {' or '.join(others)}" if others else ""))


def make_schedule(name: str, steps: int, sigma_range: SigmaRange, sigma_min: float | None = None,
                  sigma_max: float | None = None, rho: float = 7.0, spacing: str = "leading") -> torch.Tensor:
    """Build the named schedule with `steps` sigmas (plus the final 0) inside the denoiser's valid range."""
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    lo = max(sigma_min if sigma_min is not None else sigma_range.sigma_min, sigma_range.sigma_min)
    hi = min(sigma_max if sigma_max is not None else sigma_range.sigma_max, sigma_range.sigma_max)
    if name == "karras":
        return karras(steps, lo, hi, rho)
    if name == "karras_trailing":
        return karras_trailing(steps, lo, hi, rho)
    if name == "loglinear":
        return loglinear(steps, lo, hi)
    if name == "uniform":
        if not sigma_range.is_discrete:
            raise UserError("schedule 'uniform' needs a discrete-time model; use scheduler, karras or loglinear")
        return discrete_uniform(steps, sigma_range.discrete, spacing)
    if name == "trailing":  # diffusers' timestep_spacing="trailing": the grid few-step students of VP teachers use
        if not sigma_range.is_discrete:
            raise UserError("schedule 'trailing' needs a discrete-time model; use karras_trailing")
        return discrete_uniform(steps, sigma_range.discrete, "trailing")
    if name == "scheduler":  # the model's own diffusers scheduler, every spacing setting as it computes them
        if sigma_range.scheduler is None:
            raise UserError("schedule 'scheduler' needs a model that ships with a diffusers scheduler; use karras")
        return sigma_range.scheduler(steps)
    raise UserError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


# A schedule file (`fewstep search-schedule`'s output): JSON with "sigmas" (ending in 0), the "sampler" it was made
# for, and how it was found (objective, quality, model hash, seeds, cost).


def is_schedule_file(schedule: str | None) -> bool:
    """Whether `schedule` names a schedule file (a .json path) rather than a formula."""
    return schedule is not None and str(schedule).endswith(".json")


def read_schedule_file(path: str | Path) -> dict[str, Any]:
    """Read a schedule file, checking its sigmas and sampler; a bad file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"schedule file {path} does not exist")
    try:
        result = json.loads(path.read_text())
        result["sigmas"] = explicit(result["sigmas"]).tolist()
        if not isinstance(result["sampler"], str):
            raise TypeError("'sampler' must be a sampler name")
        scale = result.get("cfg_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise TypeError(f"'cfg_scale' must be a positive number, got {scale!r}")
    except UserError as e:
        raise UserError(f"{path} is not a schedule file: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a schedule file: {type(e).__name__} {e}") from None
    return result


def write_schedule_file(result: dict[str, Any], path: str | Path) -> Path:
    """Write a schedule file as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
