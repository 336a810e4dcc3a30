"""Candidates of a search: candidate c of item i is sampled from the noise of sample index i + c * STRIDE.

Candidate 0 is exactly the plain sample (index i), so best-of-1 equals plain sampling bit for bit, and a larger
search contains every candidate of a smaller one. The sampler itself runs through `plan` and `generate` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fewstep.core.cond import CondLike
from fewstep.core.noise import SampleNoise
from fewstep.models.info import LoadedModel
from fewstep.plan import AppliedPlan, SamplingPlan
from fewstep.samplers import generate
from fewstep.search.verifiers import Verifier, checked_scores

STRIDE = 2**32  # more items than this per seed would share noise between candidates


@dataclass
class Candidates:
    """Draws and scores candidates for n items on a model whose plan is applied; counts what they cost."""

    model: LoadedModel
    run: AppliedPlan
    plan: SamplingPlan
    verifier: Verifier
    n: int
    seed: int = 0
    cond: CondLike = None
    request: Any = None  # what the verifier checks: class labels, captions, or None
    batch_size: int = 256
    device: str | torch.device = "cpu"
    start_index: int = 0
    accept: float = math.inf  # scores at or above this are all equally good: an item keeps its earliest such candidate
    drawn: int = 0  # candidates drawn per item so far
    nfe: int = 0  # denoiser calls per item so far, over every candidate

    def indices(self, c: int) -> range:
        """The noise indices of candidate c of the n items."""
        lo = self.start_index + c * STRIDE
        return range(lo, lo + self.n)

    def unit_noise(self, c: int) -> torch.Tensor:
        """The seeded standard-normal initial noise of candidate c, [n, *shape]."""
        return SampleNoise(self.seed, self.indices(c)).randn(self.model.info.shape)

    def draw(self, c: int, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, scores) of candidate c; `noise` replaces its seeded initial noise (the sampler's stays seeded)."""
        result = generate(self.run.denoiser, self.model.info.shape, self.n, self.plan.sigmas, self.plan.sampler,
                          self.seed, self.cond, self.batch_size, self.device, self.indices(c).start, noise=noise)
        images = result.samples if self.model.autoencoder is None else \
            self.model.decode(result.samples.to(self.device)).float().cpu()
        scores = checked_scores(self.verifier, images, self.request).clamp_max(self.accept)
        self.drawn, self.nfe = self.drawn + 1, self.nfe + result.nfe
        return result.samples, scores


def keep_better(best: torch.Tensor, best_scores: torch.Tensor, samples: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
    """Replace rows of best (in place) where scores beat best_scores (ties keep the earlier); the mask of changes."""
    better = scores > best_scores
    best[better] = samples[better]
    best_scores[better] = scores[better]
    return better
