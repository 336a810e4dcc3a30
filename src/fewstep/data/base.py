"""The in-memory dataset every trainer and metric uses: data tensor in model space, labels, and what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from fewstep.data.items import ItemSplit
    from fewstep.data.spec import DataSpec


@dataclass
class Dataset:
    """Training and held-out data; images live in [-1, 1] as [N, C, H, W], vectors as [N, D]."""

    name: str
    kind: str  # "image" or "vector"
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    num_classes: int = 0
    train_text: list[str] | None = None  # one caption per training item (text-to-image data), else None
    test_text: list[str] | None = None
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None  # exact log p(x) where known
    sampler: Callable[[int, torch.Generator], torch.Tensor] | None = None  # fresh samples of the true law
    meta: dict = field(default_factory=dict)
    centres: torch.Tensor | None = None  # [K, D] mode centres of vector data, for mode coverage (metrics.toy)
    spec: "DataSpec | None" = None  # how a new process finds this data again; saved models record it
    streamed: "ItemSplit | None" = None  # items read on demand; then `train` holds only a seeded sample of them

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item."""
        return tuple(self.train.shape[1:])

    @property
    def sigma_data(self) -> float:
        """Std of the training data (EDM's sigma_data), rounded for a stable config."""
        return round(float(self.train.float().std()), 4)
