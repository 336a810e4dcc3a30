"""Training batches: this process's rows of a global batch, and randomness that every process draws alike.

The training loop asks a `BatchSource` for the batch of each step: `TensorSource` draws rows of in-memory tensors;
streamed sources (folders, shards) implement the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

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
    text: list[str] | None = None  # this rank's captions (text-to-image data), else None

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


def draw_items(seed: int, step: int, n: int, global_size: int) -> tuple[torch.Generator, torch.Tensor]:
    """The step's generator and its global batch of item indices, drawn uniformly with replacement by it: no state
    but (seed, step), so any process reads any step's batch without an O(n) permutation in memory."""
    g = step_generator(seed, step)
    return g, torch.randint(n, (global_size,), generator=g)


def rank_rows(global_size: int, rank: int, world: int) -> slice:
    """This process's rows of a global batch."""
    per = global_size // world
    return slice(rank * per, (rank + 1) * per)


TextEncoder = Callable[[list[str]], CondLike]  # captions -> their condition (a Cond of prompt embeddings)


@dataclass
class TensorSource:
    """Rows of in-memory items (and their condition or captions), drawn uniformly with replacement (draw_items)."""

    data: torch.Tensor
    cond: CondLike = None
    seed: int = 0
    text: list[str] | None = None  # one caption per item
    encode_text: TextEncoder | None = None  # when set, a batch's condition is its captions' encoding

    def batch(self, step: int, global_size: int, rank: int, world: int, device: torch.device) -> Batch:
        g, idx = draw_items(self.seed, step, len(self.data), global_size)
        rows = rank_rows(global_size, rank, world)
        mine = idx[rows]
        text = [self.text[i] for i in mine.tolist()] if self.text is not None else None
        cond = self.encode_text(text) if self.encode_text and text is not None else conds.select(self.cond, mine)
        return Batch(self.data[mine].to(device), conds.to_device(cond, device), step, g, rows, global_size, text)
