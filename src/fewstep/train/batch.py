"""A training batch: this process's rows of a global batch, and randomness that every process draws alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Items, labels and a per-step generator; random draws cover the global batch, then keep this rank's rows."""

    x: torch.Tensor
    labels: torch.Tensor | None
    step: int
    generator: torch.Generator
    rows: slice
    global_size: int

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard-normal [rows, *shape], identical to the single-process draw for the same rows."""
        return torch.randn(self.global_size, *shape, generator=self.generator)[self.rows].to(self.x.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [rows, *shape] in [0, 1), drawn like randn."""
        return torch.rand(self.global_size, *shape, generator=self.generator)[self.rows].to(self.x.device)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step: a function of (seed, step) alone, so resume is bit-exact."""
    from fewstep.core.noise import sample_seed

    return torch.Generator().manual_seed(sample_seed(seed, step, stream=7))


def draw_batch(data: torch.Tensor, labels: torch.Tensor | None, seed: int, step: int, global_size: int,
               rank: int, world: int, device: torch.device) -> Batch:
    """Draw a global batch of indices (uniform, with replacement) for this step; keep this rank's rows."""
    g = step_generator(seed, step)
    idx = torch.randint(len(data), (global_size,), generator=g)
    per = global_size // world
    rows = slice(rank * per, (rank + 1) * per)
    mine = idx[rows]
    return Batch(data[mine].to(device), None if labels is None else labels[mine].to(device), step, g, rows, global_size)
