"""Candidates of a search: candidate c of item i is sampled from the noise of index indices[i] + c * STRIDE.

Candidate 0 is exactly the plain sample (index indices[i], default i), so best-of-1 equals plain sampling bit for
bit, and a larger search contains every candidate of a smaller one. The sampler itself runs through `plan` and
`generate` unchanged. A search may draw a candidate for only some items (those not yet accepted): each item's
candidate is the same whichever others are drawn with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from fewstep.core import cond as conds
from fewstep.core.cond import CondLike
from fewstep.core.noise import SampleNoise
from fewstep.models.info import LoadedModel
from fewstep.plan import AppliedPlan, SamplingPlan
from fewstep.samplers import generate
from fewstep.search.verifiers import Verifier, checked_scores

STRIDE = 2**32  # more items than this per seed would share noise between candidates


def select_request(request: Any, items: torch.Tensor) -> Any:
    """The rows `items` of a verifier's request: class labels, a list of captions, or None."""
    if request is None:
        return None
    if isinstance(request, torch.Tensor):
        return request[items.to(request.device)]
    return [request[i] for i in items.tolist()]


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
    indices: Sequence[int] | None = None  # the noise index of each item's plain sample (default 0..n-1)
    accept: float = math.inf  # scores at or above this are all equally good: an item keeps its earliest such candidate
    drawn: int = 0  # candidates drawn over all items so far
    nfe_total: int = 0  # denoiser calls per sample, summed over every candidate drawn

    def noise_indices(self, c: int, items: torch.Tensor | None = None) -> list[int]:
        """The noise indices of candidate c of `items` (default all n items)."""
        base = torch.arange(self.n) if self.indices is None else torch.as_tensor(list(self.indices))
        return (base[slice(None) if items is None else items] + c * STRIDE).tolist()

    def unit_noise(self, c: int) -> torch.Tensor:
        """The seeded standard-normal initial noise of candidate c of every item, [n, *shape]."""
        return SampleNoise(self.seed, self.noise_indices(c)).randn(self.model.info.shape)

    def draw(self, c: int, noise: torch.Tensor | None = None,
             items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, scores) of candidate c of `items` (default all); `noise` [n, *shape] replaces its seeded initial
        noise (the sampler's stays seeded)."""
        items = torch.arange(self.n) if items is None else items
        result = generate(self.run.denoiser, self.model.info.shape, len(items), self.plan.sigmas, self.plan.sampler,
                          self.seed, conds.select(self.cond, items), self.batch_size, self.device,
                          self.noise_indices(c, items), self.plan.sampler_options, None if noise is None else noise[items])
        images = result.samples if self.model.autoencoder is None else \
            self.model.decode(result.samples.to(self.device)).float().cpu()
        scores = checked_scores(self.verifier, images, select_request(self.request, items)).clamp_max(self.accept)
        self.drawn, self.nfe_total = self.drawn + len(items), self.nfe_total + result.nfe * len(items)
        return result.samples, scores

    def open(self, scores: torch.Tensor) -> torch.Tensor:
        """The items whose best score is still below `accept`: the only ones a search draws more candidates for."""
        return torch.nonzero(scores < self.accept).flatten()


def keep_better(best: torch.Tensor, best_scores: torch.Tensor, items: torch.Tensor, samples: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
    """Replace rows `items` of best (in place) where scores beat best_scores (ties keep the earlier); the items
    replaced."""
    better = scores > best_scores[items]
    changed = items[better]
    best[changed] = samples[better]
    best_scores[changed] = scores[better]
    return changed
