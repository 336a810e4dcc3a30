"""Metrics that are means over samples, kept as their per-sample terms so the bootstrap can resample them.

Accuracies, log-densities, CLIP scores and teacher agreement are (ratios of) sums over samples: a resample's value is
the same formula on the resampled terms, so their intervals cost one index gather, not a re-evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampleMean:
    """sum(values) / sum(weights) over samples (weights 1 when None), its square root when `root` (an RMSE)."""

    values: torch.Tensor  # [n] per-sample terms
    weights: torch.Tensor | None = None  # [n] e.g. the objects a sample holds, or 1 where its log-density is finite
    root: bool = False

    def estimate(self) -> float:
        """The metric on all samples."""
        return self.resampled(torch.arange(len(self.values))[None])[0]

    def trials(self) -> float:
        """What the mean is taken over: the summed weights, or the number of samples."""
        return float(self.weights.sum()) if self.weights is not None else float(len(self.values))

    def resampled(self, idx: torch.Tensor) -> list[float]:
        """The metric on each row of idx [resamples, n] (sample indices); nan where a resample has no weight."""
        total = self.values.double()[idx].sum(1)
        weight = self.weights.double()[idx].sum(1) if self.weights is not None else torch.full_like(total, idx.shape[1])
        mean = torch.where(weight > 0, total / weight.clamp(min=1e-300), math.nan)
        return (mean.clamp(min=0).sqrt() if self.root else mean).tolist()
