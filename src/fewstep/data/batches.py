"""Training batches: this process's rows of a global batch, and randomness that every process draws alike.

The training loop asks a `BatchSource` for the batch of each step: `TensorSource` draws rows of in-memory tensors;
streamed sources (folders, shards) implement the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fewstep.core import cond as conds
from fewstep.core.cond import CondLike


@dataclass
class Batch:
    """Items, their condition (labels, a Cond or None) and a per-step generator; random draws cover the global batch,
    then keep this rank's rows."""

    x: torch.Tensor
    cond: CondLike
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


class BatchSource(Protocol):
    """Where the training loop gets the batch of a step: a function of (step, process) alone, so resume is exact."""

    def batch(self, step: int, global_size: int, rank: int, world: int, device: torch.device) -> Batch: ...


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step: a function of (seed, step) alone, so resume is bit-exact."""
    from fewstep.core.noise import sample_seed

    return torch.Generator().manual_seed(sample_seed(seed, step, stream=7))


def rank_rows(global_size: int, rank: int, world: int) -> slice:
    """This process's rows of a global batch."""
    per = global_size // world
    return slice(rank * per, (rank + 1) * per)


@dataclass
class TensorSource:
    """Rows of in-memory items (and their condition), drawn uniformly with replacement by the step's generator."""

    data: torch.Tensor
    cond: CondLike = None
    seed: int = 0

    def batch(self, step: int, global_size: int, rank: int, world: int, device: torch.device) -> Batch:
        g = step_generator(self.seed, step)
        idx = torch.randint(len(self.data), (global_size,), generator=g)
        rows = rank_rows(global_size, rank, world)
        mine = idx[rows]
        return Batch(self.data[mine].to(device), conds.to_device(conds.select(self.cond, mine), device), step, g, rows,
                     global_size)
