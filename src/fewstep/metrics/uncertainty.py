"""Uncertainty from the data: bootstrap intervals of the ruler's quality numbers, and the tie rule built on them.

Each resample draws sample indices and reference indices with replacement from generators seeded by a fixed
BOOTSTRAP_SEED, so results are deterministic and every row of a comparison at the same n uses the same index sets:
rows measured on the same seeds (sample i has the same noise in every row) against the same reference are paired,
and the interval of their difference comes from the per-resample differences, where the shared noise cancels.
FD is recomputed on each resample's features; precision, recall and accuracy are means of per-point hits (the k-NN
manifolds stay those of the full sets: cheap, and no duplicate points at distance 0); sliced W2 is recomputed.
Intervals are basic (reverse-percentile) bootstrap intervals, 2 theta - q_hi .. 2 theta - q_lo, which undo the
upward shift that resampling puts on FD (duplicated samples add to its mean term).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from fewstep.metrics.image import DEFAULT_K, frechet_distance, manifold_hits
from fewstep.metrics.toy import projected_w2, random_directions

BOOTSTRAP_RESAMPLES = 100  # modest: the interval's ends move by about a tenth of its width between seeds
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def resample_indices(n: int, stream: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """[resamples, n] indices drawn with replacement; the same for every call with the same (n, stream, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return torch.randint(n, (resamples, n), generator=g)


def basic_interval(estimate: float, replicates: list[float], level: float = LEVEL) -> tuple[float, float]:
    """The basic bootstrap interval: (2 estimate - q_hi, 2 estimate - q_lo) of the replicates' quantiles."""
    r = torch.tensor(replicates, dtype=torch.float64)
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return 2 * estimate - float(q[1]), 2 * estimate - float(q[0])


def _summary(estimates: Mapping[str, float], replicates: dict[str, list[float]]) -> dict:
    """Row fields: {metric}_lo / {metric}_hi, the replicates (for paired differences) and how they were drawn."""
    out: dict = {}
    for k, reps in replicates.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = basic_interval(estimates[k], reps)
    return {**out, "bootstrap": {k: [round(v, 7) for v in reps] for k, reps in replicates.items()},
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED}


def _means(hits: torch.Tensor, idx: torch.Tensor) -> list[float]:
    return hits.double()[idx].mean(1).tolist()


def image_uncertainty(features: torch.Tensor, reference: torch.Tensor, estimates: Mapping[str, float],
                      correct: torch.Tensor | None = None, k: int = DEFAULT_K) -> dict:
    """Bootstrap intervals of fd, precision, recall (and accuracy, from per-sample `correct` hits)."""
    i, j = resample_indices(len(features), 0), resample_indices(len(reference), 1)
    precision_hits, recall_hits = manifold_hits(features, reference, k)
    replicates = {"fd": [frechet_distance(features[a], reference[b]) for a, b in zip(i, j)],
                  "precision": _means(precision_hits, i), "recall": _means(recall_hits, j)}
    if correct is not None:
        replicates["accuracy"] = _means(correct, i)
    return _summary(estimates, replicates)


def toy_uncertainty(samples: torch.Tensor, reference: torch.Tensor, estimates: Mapping[str, float]) -> dict:
    """Bootstrap interval of sliced W2 against the true law's reference draws."""
    i, j = resample_indices(len(samples), 0), resample_indices(len(reference), 1)
    theta = random_directions(samples.shape[1])  # the directions of sliced_wasserstein2: project once
    pa, pb = samples.double() @ theta, reference.double() @ theta
    return _summary(estimates, {"sw2": [projected_w2(pa[a], pb[b]) for a, b in zip(i, j)]})


def _interval_of(row_a: Mapping, row_b: Mapping, metric: str, op: Callable[[float, float], float]
                 ) -> tuple[float, float, float] | None:
    """(op(a, b), lo, hi) from the two rows' bootstrap replicates (paired when drawn alike); None without them."""
    reps = [row.get("bootstrap", {}).get(metric) for row in (row_a, row_b)]
    if reps[0] is None or reps[1] is None:
        return None
    estimate = op(row_a[metric], row_b[metric])
    values = [op(a, b) for a, b in zip(*reps) if math.isfinite(op(a, b))]
    if not values or not math.isfinite(estimate):
        return None
    return (estimate, *basic_interval(estimate, values))


def difference(row_a: Mapping, row_b: Mapping, metric: str) -> tuple[float, float, float] | None:
    """a - b of a metric and its 95 % bootstrap interval, or None when a row has no replicates."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a - b)


def ratio(row_a: Mapping, row_b: Mapping, metric: str) -> tuple[float, float, float] | None:
    """a / b of a metric and its 95 % bootstrap interval, or None when a row has no replicates (or b is 0)."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a / b if b else math.nan)


def ties(row_a: Mapping, row_b: Mapping) -> dict[str, bool]:
    """Per metric with replicates in both rows: does the difference's interval contain 0 (not resolved)?"""
    out = {}
    for k in row_a.get("bootstrap", {}):
        d = difference(row_a, row_b, k)
        if d is not None:
            out[k] = d[1] <= 0 <= d[2]
    return out


def unresolved_share(rows: list[Mapping], reference: Mapping, metric: str) -> tuple[int, int]:
    """(how many rows, of those with intervals) are not resolved from `reference` on `metric`."""
    found = [ties(r, reference).get(metric) for r in rows if r is not reference]
    known = [t for t in found if t is not None]
    return sum(known), len(known)
