"""Which calls of a trajectory run the whole network ("key" or "full" steps) for the U-Net feature caches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fewstep.core.errors import UserError


@dataclass
class KeySteps:
    """Full calls: every `interval`-th call, the listed call indices, or DeepCache's non-uniform power schedule.

    Calls are counted from 0 along one trajectory (the sampler's network calls for one batch: NFE of them).
    `power` > 1 places ceil(nfe / interval) full calls densely around call `center` (DeepCache's non-uniform
    1:N strategy).
    """

    interval: int = 3
    full_steps: tuple[int, ...] = ()
    power: float = 0.0
    center: int = 0
    nfe: int = 0

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise UserError(f"interval must be at least 1 (1 = never cache), got {self.interval}")
        if self.full_steps and (self.full_steps[0] != 0 or list(self.full_steps) != sorted(set(self.full_steps))):
            raise UserError("full_steps must be increasing call indices starting at 0, like [0,1,3,7]")
        if self.power and (self.power <= 1 or self.nfe < 1 or not 0 <= self.center < self.nfe):
            raise UserError("power needs power > 1, nfe = the sampler's NFE and 0 <= center < nfe")
        self._full = self.full_step_set()

    def full_step_set(self) -> tuple[int, ...] | None:
        """The explicit set of full calls, or None for the uniform interval."""
        if self.full_steps:
            return self.full_steps
        if self.power:
            return power_schedule(self.nfe, math.ceil(self.nfe / self.interval), self.center, self.power)
        return None

    def is_full(self, call: int) -> bool:
        """Whether call `call` of a trajectory runs the whole network."""
        return call % self.interval == 0 if self._full is None else call in self._full


def power_schedule(nfe: int, n_full: int, center: int, power: float) -> tuple[int, ...]:
    """n_full call indices in [0, nfe): 0, then center + sign(u)|u|^p for u evenly spaced, so dense near `center`.

    DeepCache's sample_from_quad_center: u runs from -center^(1/p) to (nfe - center)^(1/p) in n_full + 1 points, the
    ends dropped; when rounding merges indices, p falls by 0.02 until n_full distinct ones remain (uniform if never).
    """
    p = power
    while p > 1:
        u = np.linspace(-(center ** (1 / p)), (nfe - center) ** (1 / p), n_full + 1)
        ticks = np.unique(np.trunc((np.sign(u) * np.abs(u) ** p).round(9)).astype(int))
        calls = sorted({0, *(int(t) + center for t in ticks[1:-1])})
        if len(calls) == n_full:
            return tuple(calls)
        p -= 0.02
    return tuple(range(0, nfe, math.ceil(nfe / n_full)))
