"""Uncertainty from the data: bootstrap intervals of the ruler's quality numbers, and the tie rule built on them.

Each resample draws sample indices and reference indices with replacement from generators seeded by a fixed
BOOTSTRAP_SEED, so results are deterministic and every row of a comparison at the same n uses the same index sets:
rows measured on the same seeds (sample i has the same noise in every row) against the same reference are paired,
and the interval of their difference comes from the per-resample differences, where the shared noise cancels.
FD, sliced W2, MMD and mode coverage are recomputed on each resample (MMD from the kernel matrices weighted by the
resample's counts, mode coverage from each point's mode); precision and recall are means of per-point hits (the k-NN
manifolds stay those of the full sets: cheap, and no duplicate points at distance 0); accuracies, confidence,
log-density, CLIP score and teacher agreement are means of per-sample terms (fewstep.metrics.persample), resampled
by the same sample indices. Intervals are basic (reverse-percentile) bootstrap intervals, 2 theta - q_hi ..
2 theta - q_lo, which undo the upward shift that resampling puts on FD and MMD (duplicated samples add to them).
Rows of one setting measured at several seeds are combined by pool_seeds (a two-stage bootstrap).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from fewstep.metrics.image import DEFAULT_K, frechet_distance, manifold_hits
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.toy import coverage_of_masses, mmd2_weighted, mode_index, mode_radius, projected_w2, random_directions

BOOTSTRAP_RESAMPLES = 100  # modest: the interval's ends move by about a tenth of its width between seeds
BOOTSTRAP_SEED = 0
LEVEL = 0.95
SAMPLES, REFERENCE, SEEDS = 0, 1, 2  # the index streams: sample indices, reference indices, seeds of pool_seeds

SHARES = ("precision", "recall", "accuracy", "confidence", "logp_finite", "modes_covered", "off_mode")
NON_NEGATIVE = ("fd", "sw2", "worst_mode_ratio", "clip_score")

Row = Mapping[str, object]


def resample_indices(n: int, stream: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """[resamples, n] indices drawn with replacement; the same for every call with the same (n, stream, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return torch.randint(n, (resamples, n), generator=g)


def _counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    """[resamples, n] how often each index occurs in each row of idx."""
    return torch.zeros(len(idx), n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))


def basic_interval(estimate: float, replicates: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The basic bootstrap interval: (2 estimate - q_hi, 2 estimate - q_lo) of the replicates' quantiles."""
    r = torch.tensor(replicates, dtype=torch.float64)
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return 2 * estimate - float(q[1]), 2 * estimate - float(q[0])


def _range(metric: str) -> tuple[float, float]:
    """The values a metric can take: shares and accuracies in [0, 1], distances and ratios at least 0, else any."""
    base = metric.removeprefix("heldout_")
    if base in SHARES or base.endswith("_accuracy"):
        return 0.0, 1.0
    return (0.0, math.inf) if base in NON_NEGATIVE or base.startswith("agreement") else (-math.inf, math.inf)


def metric_interval(metric: str, estimate: float, replicates: Sequence[float]) -> tuple[float, float]:
    """basic_interval, clipped to the values the metric can take (a basic interval of a share near 1 can pass 1)."""
    lo, hi = basic_interval(estimate, replicates)
    low, high = _range(metric)
    return max(lo, low), min(hi, high)


def _summary(estimates: Mapping[str, float], replicates: Mapping[str, list[float]]) -> dict:
    """Row fields: {metric}_lo / {metric}_hi, the replicates (for paired differences) and how they were drawn.

    A metric whose estimate or any replicate is not finite (logp with every sample off the support) gets none."""
    kept = {k: reps for k, reps in replicates.items()
            if math.isfinite(estimates[k]) and all(math.isfinite(v) for v in reps)}
    out: dict = {}
    for k, reps in kept.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = metric_interval(k, estimates[k], reps)
    return {**out, "bootstrap": {k: [round(v, 7) for v in reps] for k, reps in kept.items()},
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED}


def _means(hits: torch.Tensor, idx: torch.Tensor) -> list[float]:
    return hits.double()[idx].mean(1).tolist()


def _term_replicates(terms: Mapping[str, SampleMean], idx: torch.Tensor) -> dict[str, list[float]]:
    return {k: t.resampled(idx) for k, t in terms.items()}


def mean_uncertainty(terms: Mapping[str, SampleMean], estimates: Mapping[str, float]) -> dict:
    """Bootstrap intervals of metrics that are means over samples (accuracies, agreement, CLIP score)."""
    n = len(next(iter(terms.values())).values) if terms else 0
    return _summary(estimates, _term_replicates(terms, resample_indices(n, SAMPLES)) if terms else {})


def image_uncertainty(features: torch.Tensor, reference: torch.Tensor, estimates: Mapping[str, float],
                      terms: Mapping[str, SampleMean] | None = None, k: int = DEFAULT_K) -> dict:
    """Bootstrap intervals of fd, precision, recall, and of the per-sample means in `terms` (accuracy, confidence,
    agreement, the captions accuracies, ...)."""
    i, j = resample_indices(len(features), SAMPLES), resample_indices(len(reference), REFERENCE)
    precision_hits, recall_hits = manifold_hits(features, reference, k)
    replicates = {"fd": [frechet_distance(features[a], reference[b]) for a, b in zip(i, j)],
                  "precision": _means(precision_hits, i), "recall": _means(recall_hits, j),
                  **_term_replicates(terms or {}, i)}
    return _summary(estimates, replicates)


def _mode_replicates(samples: torch.Tensor, reference: torch.Tensor, centres: torch.Tensor, i: torch.Tensor,
                     j: torch.Tensor) -> dict[str, list[float]]:
    """modes_covered, worst_mode_ratio and off_mode of each resample, from each point's mode (fewstep.metrics.toy)."""
    radius = mode_radius(centres)
    got, want = (_counts(mode_index(x, centres, radius)[idx], len(centres) + 1) / idx.shape[1]
                 for x, idx in ((samples, i), (reference, j)))
    per_resample = [coverage_of_masses(g[:-1], w[:-1]) for g, w in zip(got, want)]
    return {k: [c[k] for c in per_resample] for k in per_resample[0]}


def toy_uncertainty(samples: torch.Tensor, reference: torch.Tensor, estimates: Mapping[str, float],
                    terms: Mapping[str, SampleMean] | None = None, centres: torch.Tensor | None = None) -> dict:
    """Bootstrap intervals of sliced W2 and MMD against the reference draws, of the per-sample means in `terms`
    (logp, logp_finite, agreement) and, given the mode centres, of mode coverage."""
    i, j = resample_indices(len(samples), SAMPLES), resample_indices(len(reference), REFERENCE)
    theta = random_directions(samples.shape[1])  # the directions of sliced_wasserstein2: project once
    pa, pb = samples.double() @ theta, reference.double() @ theta
    replicates = {"sw2": [projected_w2(pa[a], pb[b]) for a, b in zip(i, j)],
                  "mmd": mmd2_weighted(samples, reference, _counts(i, len(samples)), _counts(j, len(reference))).tolist(),
                  **_term_replicates(terms or {}, i)}
    if centres is not None:
        replicates.update(_mode_replicates(samples, reference, centres, i, j))
    return _summary({k: estimates[k] for k in replicates}, replicates)


def merge_uncertainty(row: Mapping, summary: Mapping) -> dict:
    """row with another summary's intervals added and its replicates merged into the row's one `bootstrap` dict."""
    return {**row, **summary, "bootstrap": {**row.get("bootstrap", {}), **summary.get("bootstrap", {})}}


def seed_draws(n_seeds: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """pool_seeds' draws: [resamples, n_seeds] seed positions drawn with replacement, and the within-seed replicate
    each draw reads: b for a seed's first draw in resample b, then b + 1, b + 2, ... (mod resamples) for repeats."""
    drawn = resample_indices(n_seeds, SEEDS, resamples, seed)
    repeats = (drawn[:, :, None] == drawn[:, None, :]).tril(-1).sum(2)  # earlier draws of the same seed
    return drawn, (torch.arange(resamples)[:, None] + repeats) % resamples


def pool_seeds(rows: Sequence[Row]) -> dict:
    """One row from the same setting measured at several noise seeds: each bootstrapped metric is the mean over seeds,
    with a two-stage (hierarchical) bootstrap interval that holds both seed-to-seed and sample-to-sample variation.

    Resample b draws S seeds with replacement (stage 1), and each drawn seed contributes one of its own sample
    bootstrap replicates (stage 2: a fresh one for each repeat of a seed); the pooled replicate is their mean. This is
    the bootstrap of hierarchical data resampled at both stages (Davison & Hinkley, Bootstrap Methods and their
    Application, 1997, sec. 3.8; Saravanan et al. 2020, "Application of the hierarchical bootstrap to multi-level data
    in neuroscience"). Resampling seeds alone would give a zero-width interval at one seed and a coarse one at a few;
    pooling every seed's samples into one sample would hide a setting whose seeds disagree. The two-stage interval is
    conservative when seeds differ only by sampling noise (for S seeds its variance is (2S - 1) / S times the mean's:
    the sampling noise counts once in the seeds' spread and again in stage 2) and widens when they disagree beyond
    it; at one seed it is that seed's sample bootstrap exactly. A seed's first draw
    reads replicate b, so distinct seeds share the reference resample b (one reference serves every seed). The draws
    depend only on the number of seeds, so rows pooled over the same seeds stay paired. The other fields are the
    first row's; `seeds` lists the seeds and `per_seed` each metric's value at each of them.
    """
    order = sorted(rows, key=lambda r: r["seed"])
    seeds = [r["seed"] for r in order]
    if len(set(seeds)) < len(seeds) or len({r["n"] for r in order}) > 1:
        raise ValueError(f"pool_seeds takes one row per seed at one n, got seeds {seeds}")
    first = rows[0].get("bootstrap", {})  # pooled: the metrics every row has, drawn alike (older rows may lack some)
    metrics = [k for k in first if all(len(r.get("bootstrap", {}).get(k, ())) == len(first[k]) for r in order)]
    dropped = {f"{m}_{end}" for m in first for end in ("lo", "hi")}
    out = {k: v for k, v in rows[0].items() if k not in dropped}
    out.update(seeds=seeds, per_seed={m: [r[m] for r in order] for m in metrics}, bootstrap={})
    if not metrics:
        return out
    drawn, replicate = seed_draws(len(order), len(order[0]["bootstrap"][metrics[0]]))
    for m in metrics:
        reps = torch.tensor([r["bootstrap"][m] for r in order], dtype=torch.float64)  # [seeds, resamples]
        out[m] = sum(r[m] for r in order) / len(order)
        out["bootstrap"][m] = [round(v, 7) for v in reps[drawn, replicate].mean(1).tolist()]
        out[f"{m}_lo"], out[f"{m}_hi"] = metric_interval(m, out[m], out["bootstrap"][m])
    return out


def _row(row: Row | Sequence[Row]) -> Row:
    """A row, or the seed-pooled row of a list of one setting's rows at several seeds."""
    return pool_seeds(row) if isinstance(row, (list, tuple)) else row


def _interval_of(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str,
                 op: Callable[[float, float], float]) -> tuple[float, float, float] | None:
    """(op(a, b), lo, hi) from the two rows' bootstrap replicates (paired when drawn alike); None without them."""
    row_a, row_b = _row(row_a), _row(row_b)
    reps = [row.get("bootstrap", {}).get(metric) for row in (row_a, row_b)]
    if reps[0] is None or reps[1] is None:
        return None
    estimate = op(row_a[metric], row_b[metric])
    values = [op(a, b) for a, b in zip(*reps) if math.isfinite(op(a, b))]
    if not values or not math.isfinite(estimate):
        return None
    return (estimate, *basic_interval(estimate, values))


def difference(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str
               ) -> tuple[float, float, float] | None:
    """a - b of a metric and its 95 % bootstrap interval, or None when a row has no replicates. A list of one
    setting's rows at several seeds stands for their pool_seeds row."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a - b)


def ratio(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str) -> tuple[float, float, float] | None:
    """a / b of a metric and its 95 % bootstrap interval, or None when a row has no replicates (or b is 0)."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a / b if b else math.nan)


def ties(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row]) -> dict[str, bool]:
    """Per metric with replicates in both rows: does the difference's interval contain 0 (not resolved)? A list of
    one setting's rows at several seeds is pooled first (pool_seeds: seed and sample variation)."""
    row_a, row_b = _row(row_a), _row(row_b)
    out = {}
    for k in row_a.get("bootstrap", {}):
        d = difference(row_a, row_b, k)
        if d is not None:
            out[k] = d[1] <= 0 <= d[2]
    return out


def unresolved_share(rows: list[Row], reference: Row, metric: str) -> tuple[int, int]:
    """(how many rows, of those with intervals) are not resolved from `reference` on `metric`."""
    found = [ties(r, reference).get(metric) for r in rows if r is not reference]
    known = [t for t in found if t is not None]
    return sum(known), len(known)
