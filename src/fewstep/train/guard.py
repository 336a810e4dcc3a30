"""Health checks of the divergence guard (train/loop.py): finite weights, finite losses, a finite probe sample.

A checkpoint is kept only when every weight is finite and the losses of the next batch are finite, so the guard can
always roll back to a state known good before the bad step; an export is refused unless the exported weights and a
probe sample are finite.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

PROBE_SEED = 7_000_019  # the export probe's noise: a seed the ruler (seed 0 upwards) never uses
RESEED_STRIDE = 1_000_003  # a retry's data seed: seed + reseed * stride, a stream no other run's seed shares


class Diverged(Exception):
    """Training went non-finite and the allowed roll-backs are spent (or there is nothing to roll back to)."""


def nonfinite_module(modules: dict[str, nn.Module]) -> str | None:
    """The name of the first module with a non-finite parameter or buffer, else None."""
    for name, module in modules.items():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    return None


def nonfinite_loss(losses: dict[str, float]) -> str | None:
    """A description of the non-finite losses, else None."""
    bad = {n: v for n, v in losses.items() if not math.isfinite(v)}
    return f"non-finite loss {bad}" if bad else None


def reseeded(source: Any, reseed: int) -> Any:
    """The batch source a retry draws from: the same data with its seed moved by `reseed`, so a roll-back does not
    replay the batches that blew up (a source without a seed is returned as it is)."""
    if not reseed or not hasattr(source, "seed"):
        return source
    moved = copy.copy(source)
    moved.seed = source.seed + reseed * RESEED_STRIDE
    return moved


@torch.no_grad()
def check_export(denoiser: nn.Module, shape: tuple[int, ...] | list[int], cond: Any = None) -> None:
    """Refuse to export a denoiser with non-finite weights or a non-finite probe sample D(x, sigma, cond) at
    sigma_max, 1 and sigma_min (two rows; `cond` defaults to class 0 for a class-conditional denoiser)."""
    if nonfinite_module({"model": denoiser}):
        raise Diverged("the final weights are not finite; nothing exported; lower --lr and train again")
    device = next(denoiser.parameters()).device
    sr = denoiser.sigma_range
    g = torch.Generator().manual_seed(PROBE_SEED)  # its own generator: the global RNG is left as it was
    if cond is None and getattr(denoiser, "num_classes", 0):
        cond = torch.zeros(2, dtype=torch.long, device=device)
    for sigma in (sr.sigma_max, 1.0, sr.sigma_min):
        x = (torch.randn(2, *shape, generator=g) * sigma).to(device)
        with torch.random.fork_rng(devices=[]):  # e.g. label dropout in train mode must not move the global RNG
            out = denoiser(x, torch.full((2,), float(sigma), device=device), cond)
        if not bool(torch.isfinite(out).all()):
            raise Diverged(f"a probe sample of the final model at sigma {sigma:g} is not finite; nothing exported; "
                           "lower --lr and train again")
