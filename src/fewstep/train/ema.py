"""Exponential moving average of a module's parameters, with a half-life in steps and a warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An fp32 shadow copy updated as ema = beta * ema + (1 - beta) * param."""

    def __init__(self, module: nn.Module, halflife_steps: float):
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)
        self.halflife_steps = float(halflife_steps)

    def beta(self, step: int) -> float:
        """Decay at `step`: 0.5 ** (1 / halflife), capped by (1 + step) / (10 + step) early on."""
        return min(0.5 ** (1.0 / max(self.halflife_steps, 1e-8)), (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        beta = self.beta(step)
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p.detach().float(), 1 - beta)
        for ema_b, b in zip(self.module.buffers(), module.buffers()):
            ema_b.copy_(b)
