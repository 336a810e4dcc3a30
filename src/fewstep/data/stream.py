"""Batches read on demand: a DataLoader with worker processes over the items, where the global batch of step s is
still a function of (seed, step) (draw_items, the same draw as TensorSource), each process reads only its own rows,
and a resumed or restarted run picks the stream up at any step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from fewstep.core import cond as conds
from fewstep.data.base import Dataset
from fewstep.data.batches import Batch, BatchSource, TensorSource, TextEncoder, draw_items, rank_rows
from fewstep.data.items import Items, collate, read_batches, worker_count


class StepRows(Sampler):
    """Item indices this process reads at steps start, start + 1, ...: its rows of each step's global batch."""

    def __init__(self, seed: int, start: int, index: torch.Tensor, global_size: int, rows: slice):
        self.seed, self.start, self.index, self.global_size, self.rows = seed, start, index, global_size, rows

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            _, idx = draw_items(self.seed, step, len(self.index), self.global_size)
            yield self.index[idx[self.rows]].tolist()
            step += 1


@dataclass
class StreamSource:
    """Training items read by DataLoader workers, a few steps ahead; never more than those batches in memory."""

    items: Items
    index: torch.Tensor  # the training items (indices into items)
    seed: int = 0
    labels: bool = False  # condition on the items' class labels
    encode_text: TextEncoder | None = None  # when set, a batch's condition is its captions' encoding
    workers: int = 2
    prefetch: int = 2  # batches each worker reads ahead
    _stream: Any = field(default=None, init=False, repr=False)
    _at: tuple = field(default=(), init=False, repr=False)  # (next step, global_size, rank, world) of the stream

    def _start(self, step: int, global_size: int, rank: int, world: int, device: torch.device) -> None:
        self.close()
        rows = StepRows(self.seed, step, self.index, global_size, rank_rows(global_size, rank, world))
        loader = DataLoader(self.items, batch_sampler=rows, num_workers=self.workers, collate_fn=collate,
                            prefetch_factor=self.prefetch if self.workers else None,
                            pin_memory=device.type == "cuda")
        self._stream = read_batches(loader)

    def batch(self, step: int, global_size: int, rank: int, world: int, device: torch.device) -> Batch:
        if self._at != (step, global_size, rank, world):  # first call, resume, or another layout: restart there
            self._start(step, global_size, rank, world, device)
        x, labels, text = next(self._stream)
        self._at = (step + 1, global_size, rank, world)
        g, _ = draw_items(self.seed, step, len(self.index), global_size)  # advance g as TensorSource does
        text = text if self.items.has_text else None
        cond = self.encode_text(text) if self.encode_text and text is not None else labels if self.labels else None
        return Batch(x.to(device, non_blocking=True), conds.to_device(cond, device), step, g,
                     rank_rows(global_size, rank, world), global_size, text)

    def close(self) -> None:
        """Stop the worker processes (a later batch starts them again)."""
        self._stream, self._at = None, ()


def batch_source(data: Dataset, seed: int, conditional: bool = True, encode_text: TextEncoder | None = None,
                 workers: int | None = None) -> BatchSource:
    """Where the loop draws training batches of `data`: its streamed items, or its tensors in memory; both draw the
    same items for the same (seed, step)."""
    labels = conditional and data.num_classes > 0
    if data.streamed is None:
        return TensorSource(data.train, data.train_labels if labels else None, seed, data.train_text, encode_text)
    split = data.streamed
    return StreamSource(split.items, split.train, seed, labels, encode_text,
                        worker_count(len(split.train)) if workers is None else workers)
