"""Zero-order noise search (Ma et al. 2025, "Inference-time scaling for diffusion models beyond scaling denoising
steps", sec. 3.2): start from the best of n noises, then each round score n neighbours of the pivot noise,
x' = sqrt(1 - lambda^2) x + lambda eps (still unit normal), and move the pivot to the best if it beats the pivot."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fewstep.config import option
from fewstep.search.best_of_n import BestOfConfig, Outcome, best_of_n
from fewstep.search.candidates import Candidates, keep_better


@dataclass
class NoiseSearchConfig:
    """noise-search:rounds=4,n=4,lambda=0.3,verifier=classifier"""

    rounds: int = option(4, "neighbourhood rounds after the first best-of-n (candidates = n * (rounds + 1))")
    n: int = option(4, "candidates per round")
    lambda_: float = option(0.3, "neighbourhood size in (0, 1]: x' = sqrt(1 - lambda^2) x + lambda eps "
                                 "(written lambda=...)")
    verifier: str = option("classifier", "verifier: classifier[:seed=S] | density | module.path:function")
    accept: float = option(math.inf, "score at which a candidate is good enough: an item keeps its earliest such "
                                     "candidate and draws no more, so search only replaces failures, keeps "
                                     "diversity and spends less (inf = argmax)")


def noise_search(candidates: Candidates, config: NoiseSearchConfig) -> Outcome:
    """Best of n, then `rounds` rounds of n neighbours of each item's pivot noise; the best sample seen is kept.
    Items already accepted draw no more candidates."""
    out = best_of_n(candidates, BestOfConfig(config.n, config.verifier, config.accept))
    pivot = torch.stack([candidates.unit_noise(c) for c in range(config.n)])[out.choice, torch.arange(len(out.choice))]
    keep = math.sqrt(1 - config.lambda_ ** 2)
    for r in range(1, config.rounds + 1):
        next_pivot = pivot.clone()
        for j in range(config.n):
            items = candidates.open(out.scores)
            if len(items) == 0:
                return out
            c = r * config.n + j
            noise = keep * pivot + config.lambda_ * candidates.unit_noise(c)
            better = keep_better(out.samples, out.scores, items, *candidates.draw(c, noise, items))
            out.choice[better] = c
            next_pivot[better] = noise[better]
        pivot = next_pivot
    return out
