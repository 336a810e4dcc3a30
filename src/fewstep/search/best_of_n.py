"""Best-of-N: N initial noises per item, keep the sample the verifier scores highest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fewstep.config import option
from fewstep.search.candidates import Candidates, keep_better


@dataclass
class BestOfConfig:
    """best-of:n=8,verifier=classifier"""

    n: int = option(8, "candidates per item (1 = plain sampling)")
    verifier: str = option("classifier", "verifier that picks the best: classifier[:seed=S] | density | "
                                         "module.path:function")
    accept: float = option(math.inf, "score at which a candidate is good enough: an item keeps its earliest such "
                                     "candidate and draws no more, so search only replaces failures, keeps "
                                     "diversity and spends less (inf = argmax)")


@dataclass
class Outcome:
    """The kept sample of each item, its score and the candidate it came from."""

    samples: torch.Tensor
    scores: torch.Tensor
    choice: torch.Tensor  # [n] candidate id of the kept sample


def best_of_n(candidates: Candidates, config: BestOfConfig) -> Outcome:
    """Draw candidates 0..n-1 of every item not yet accepted and keep each item's best (the earliest of equals)."""
    samples, scores = candidates.draw(0)
    choice = torch.zeros(len(scores), dtype=torch.long)
    for c in range(1, config.n):
        items = candidates.open(scores)
        if len(items) == 0:
            break
        choice[keep_better(samples, scores, items, *candidates.draw(c, items=items))] = c
    return Outcome(samples, scores, choice)
