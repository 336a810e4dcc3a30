"""What every accelerator shares: the handle apply() returns, trajectory tracking, spec strings, finding the network.

An accelerator is a dataclass config plus `apply(model, config) -> handle` (the diffusers hooks pattern): the handle
changes nothing but the wrapped instances' forward, `remove()` restores them exactly, and `stats()` counts the
calls it ran in full and the calls it served (partly) from its cache, so FLOPs and NFE stay exact.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from fewstep.core.denoiser import backbone
from fewstep.core.errors import UserError

class AcceleratorHandle:
    """An applied accelerator: remove() undoes it, reset() forgets its state, stats() says what it skipped.

    Calls are grouped into trajectories, one per sampling call and batch. State lives inside one trajectory only: it
    is dropped by reset(), and automatically when a call's batch shape changes or its noise level rises above the
    previous call's (along one trajectory every sampler's noise level only falls; EDM's stochastic sampler raises it
    on purpose, so there a cache restarts at each churned step: correct, but it saves less).
    """

    def __init__(self) -> None:
        self.full_calls = 0
        self.cached_calls = 0
        self.call_index = 0  # calls so far in the current trajectory
        self._batch: tuple | None = None
        self.level: float | None = None  # noise level of the current call

    def begin_call(self, x: torch.Tensor, level: torch.Tensor | float) -> int:
        """Register one call on batch x at noise level `level` (sigma, or a timestep increasing with it); its index."""
        level = float(torch.as_tensor(level).max())
        batch = (tuple(x.shape), x.dtype, x.device)
        if batch != self._batch or self.level is None or level > self.level:
            self.reset()
            self._batch = batch
        self.level = level
        self.call_index += 1
        return self.call_index - 1

    def reset(self) -> None:
        """Start a new trajectory: drop every cached tensor (the counters keep running)."""
        self.call_index = 0
        self._batch = self.level = None
        self.clear()

    def clear(self) -> None:
        """Drop the cached state of the current trajectory (accelerators with state override this)."""

    def remove(self) -> None:
        """Undo apply(): the model behaves, and is built, exactly as before."""
        self.reset()
        self.detach()

    def detach(self) -> None:
        """Restore the wrapped instances (accelerators that wrap something override this)."""

    def stats(self) -> dict[str, int]:
        """Network calls run in full and calls served from the cache, since apply()."""
        return {"full_calls": self.full_calls, "cached_calls": self.cached_calls}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'name:key=value,key=[1,2]' -> (name, {key: text}); a list value is written in brackets."""
    name, _, body = spec.strip().partition(":")
    settings = {}
    for item in re.split(r",(?![^\[]*\])", body) if body.strip() else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad setting {item!r} in {spec!r}; write NAME:KEY=VALUE,KEY=VALUE")
        settings[key.strip()] = value.strip()
    return name.strip(), settings


def find_network(target: Any, cls: type[nn.Module] | tuple[type[nn.Module], ...], accelerator: str) -> nn.Module:
    """The `cls` network (or one of several classes) inside a network, a denoiser (also behind wrappers with .inner)
    or a LoadedModel."""
    try:
        obj = backbone(target)
    except TypeError:  # a bare network
        obj = target
    if isinstance(obj, nn.Module):
        for module in obj.modules():
            if isinstance(module, cls):
                return module
    found = type(obj).__name__
    names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
    raise UserError(f"{accelerator} works on a diffusers {names}; this model's network is a {found}")


def wrap_forward(module: nn.Module, forward: Any, accelerator: str) -> None:
    """Give one instance a new forward (its class, weights and other instances are untouched)."""
    if "forward" in module.__dict__:
        raise UserError(f"cannot apply {accelerator}: this network is already accelerated; remove() the other first")
    module.forward = forward


def unwrap_forward(module: nn.Module) -> None:
    """Undo wrap_forward: the instance falls back to its class's forward."""
    module.__dict__.pop("forward", None)
