"""Error-aware residual reuse for a transformer (ERTACache style): an offline profile decides which calls reuse a residual.

Profile: run the sampler once uncached on a few held-out seeds and keep the whole block stack's residual R_k of
every network call k (blockcache.py, head = 0), summarised by its Gram matrix G_jk = sum over samples <R_j, R_k>.
Reusing the residual of full call j at call k with the least-squares factor a_jk = G_jk / G_jj leaves the relative
error e_jk = ||R_k - a_jk R_j|| / ||R_k|| = sqrt(1 - G_jk^2 / (G_jj G_kk)). Under a budget (a fraction of the calls),
calls are made cached greedily, each time the one that adds the least total profiled error.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from fewstep.accel.blockcache import BlockCacheHandle
from fewstep.accel.blocks import BlockStack, block_stack
from fewstep.core.errors import UserError
from fewstep.samplers import generate

LEVEL_TOLERANCE = 1e-4


@dataclass
class ResidualProfile:
    """The residual Gram matrix along one sampler run, with the noise level (network timestep) of each call."""

    sampler: str
    sigmas: list[float]
    levels: list[float]
    gram: list[list[float]]
    n: int
    seed: int

    def scale(self, j: int, k: int) -> float:
        """a_jk: the least-squares factor that maps R_j onto R_k."""
        return self.gram[j][k] / max(self.gram[j][j], 1e-30)

    def error(self, j: int, k: int) -> float:
        """e_jk: relative L2 error of a_jk R_j in place of R_k."""
        g = self.gram
        return math.sqrt(max(0.0, 1 - g[j][k] ** 2 / max(g[j][j] * g[k][k], 1e-30)))

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ResidualProfile":
        """Read a profile written by save()."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"residual profile {path} does not exist; make one with "
                            "fewstep.accel.errorcache.profile_residuals(...).save(path)")
        from fewstep.config import build_config
        from fewstep.core.files import read_json

        data = read_json(path, "a residual profile")
        missing = {f.name for f in fields(cls)} - set(data) if isinstance(data, dict) else {"all fields"}
        if missing:
            raise UserError(f"{path} is not a residual profile (missing {', '.join(sorted(missing))})")
        profile = build_config(cls, data, where=str(path))
        n = len(profile.levels)
        if len(profile.gram) != n or any(len(row) != n for row in profile.gram):
            raise UserError(f"{path} is not a residual profile (its gram matrix is not {n} x {n})")
        return profile


class ResidualRecorder(BlockCacheHandle):
    """Runs every call in full and keeps each call's stack residual (head = 0) and noise level."""

    name = "residual profile"

    def __init__(self, stack: BlockStack):
        super().__init__(stack, head=0)
        self.residuals: list[torch.Tensor] = []
        self.levels: list[float] = []

    def reuse_scale(self) -> float | None:
        return None

    def after_full(self) -> None:
        self.residuals.append(torch.cat([r.detach().double().flatten().cpu() for r in self.residual if r is not None]))
        self.levels.append(self.level)


def profile_residuals(denoiser: Any, shape: Sequence[int], sigmas: torch.Tensor, sampler: str = "heun", n: int = 8,
                      seed: int = 1000, labels: torch.Tensor | None = None,
                      device: str = "cpu") -> ResidualProfile:
    """Profile the transformer inside `denoiser` on samples 0..n-1 of the held-out `seed`, in one batch."""
    recorder = ResidualRecorder(block_stack(denoiser, "errorcache"))
    try:
        generate(denoiser, shape, n, sigmas, sampler, seed, labels, batch_size=n, device=device)
    finally:
        recorder.remove()
    stack = torch.stack(recorder.residuals)
    return ResidualProfile(sampler, [float(s) for s in sigmas], recorder.levels, (stack @ stack.T).tolist(), n, seed)


def choose_reuse(profile: ResidualProfile, budget: float) -> frozenset[int]:
    """The calls to serve from the cache: floor(budget * calls) of them, added greedily by least total error."""

    def total_error(reuse: set[int]) -> float:
        total, full = 0.0, 0
        for k in range(1, len(profile.levels)):
            if k in reuse:
                total += profile.error(full, k)
            else:
                full = k
        return total

    reuse: set[int] = set()
    for _ in range(int(budget * len(profile.levels))):
        candidates = [k for k in range(1, len(profile.levels)) if k not in reuse]
        reuse.add(min(candidates, key=lambda k: total_error(reuse | {k})))
    return frozenset(reuse)


@dataclass
class ErrorCacheConfig:
    """A residual profile (JSON from profile_residuals) and the fraction of calls that may reuse a residual."""

    profile: str = ""
    budget: float = 0.3

    def __post_init__(self) -> None:
        if not self.profile:
            raise UserError("errorcache needs a residual profile: errorcache:profile=PATH.json,budget=0.3")
        if not 0 <= self.budget < 1:
            raise UserError(f"errorcache: budget is a fraction of the calls in [0, 1), got {self.budget}")


class ErrorCacheHandle(BlockCacheHandle):
    """Serves the profile's chosen calls with a_jk R_j, j the last full call; no transformer block runs on them.

    Calls are matched to the profile by noise level, in order, so the profile must come from the same sampler and
    sigmas; a call at a level the profile lacks is an error.
    """

    name = "errorcache"

    def __init__(self, stack: BlockStack, config: ErrorCacheConfig):
        super().__init__(stack, head=0)
        self.profile = ResidualProfile.load(config.profile)
        self.reuse = choose_reuse(self.profile, config.budget)
        self._k = self._k_full = -1  # profile indices of this call and of the last full call

    def reuse_scale(self) -> float | None:
        levels = self.profile.levels
        after = range(self._k + 1, len(levels))
        self._k = next((k for k in after if abs(levels[k] - self.level) <= LEVEL_TOLERANCE * max(1, abs(self.level))),
                       -1)
        if self._k < 0:
            raise UserError(f"errorcache: the profile ({self.profile.sampler}, {len(self.profile.sigmas) - 1} steps) "
                            f"has no call at noise level {self.level:.4g}; profile this sampler and schedule")
        return self.profile.scale(self._k_full, self._k) if self._k in self.reuse and self._k_full >= 0 else None

    def after_full(self) -> None:
        self._k_full = self._k

    def clear(self) -> None:
        super().clear()
        self._k = self._k_full = -1


def apply_error_cache(model: Any, config: ErrorCacheConfig) -> ErrorCacheHandle:
    """Apply the profiled residual cache to the transformer inside `model`."""
    return ErrorCacheHandle(block_stack(model, "errorcache"), config)
