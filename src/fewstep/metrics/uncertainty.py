"""Uncertainty from the data: intervals of the ruler's quality numbers, and the tie rule built on them.

Two resampling schemes, chosen per metric by how it behaves on data (benchmarks/interval_calibration.py measures both
against independent re-draws; docs/BENCHMARKS.md sec. 9):

- Bootstrap, for means over samples (accuracies, confidence, log-density, CLIP score, teacher agreement: the
  per-sample terms of fewstep.metrics.persample), precision and recall (means of per-point hits; the k-NN manifolds
  stay those of the full sets), sliced W2 and mode coverage. Each resample draws sample and reference indices with
  replacement from generators seeded by a fixed BOOTSTRAP_SEED, so every row at the same n uses the same index sets.
  Intervals are basic (reverse-percentile) intervals, 2 theta - q_hi .. 2 theta - q_lo.
- Grouped jackknife, for FD and MMD. Resampling with replacement duplicates about a third of the points, which
  these metrics read as a smaller, lumpier set: FD's small-sample bias grows as the effective n nears the
  feature dimension (on 128-d features at n = 500 the replicates sit near 50 while the estimate is 4.4) and
  duplicates add k(x, x) = 1 terms to MMD, so no bootstrap interval is centred (the basic one even falls below 0).
  Instead the items are dealt into JACKKNIFE_GROUPS groups after a fixed shuffle (group_of: grouped by index mod g,
  a class-conditional model's samples, labelled i mod 10, put one class in each group, and every deletion took half
  of a class); the metric is recomputed with each group of the samples deleted, then each group of the reference,
  and var = sum over both sides of (g - 1) / g * sum_k (theta_k - mean)^2 (the delete-a-group jackknife; Efron &
  Stein 1981 for why it errs on the large side). The interval is theta +- z sd, which contains the estimate.

Either way rows measured on the same seeds (sample i has the same noise in every row) against the same reference
are paired: the interval of a difference or ratio comes from the per-resample (per-deleted-group) differences,
where the shared noise cancels. Rows of one setting measured at several seeds are combined by pool_seeds. Rows
written before the jackknife keep FD and MMD replicates in `bootstrap`, and are read with them.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Mapping, Sequence

import torch

from fewstep.metrics.image import DEFAULT_K, frechet_distance, manifold_hits
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.toy import coverage_of_masses, mmd2_weighted, mode_index, mode_radius, projected_w2, random_directions

BOOTSTRAP_RESAMPLES = 100  # modest: the interval's ends move by about a tenth of its width between seeds
BOOTSTRAP_SEED = 0
LEVEL = 0.95
SAMPLES, REFERENCE, SEEDS = 0, 1, 2  # the index streams: sample indices, reference indices, seeds of pool_seeds
JACKKNIFE_GROUPS = 20  # groups of the delete-a-group jackknife (items dealt into groups after a fixed shuffle)
JACKKNIFE_SEED = 0  # the shuffle's seed
JACKKNIFE_GROUPING = "shuffled"  # rows record it; rows grouped otherwise (by index mod g, before 2026-12-04) don't pair

SHARES = ("precision", "recall", "accuracy", "confidence", "logp_finite", "modes_covered", "off_mode")
NON_NEGATIVE = ("fd", "fid_inception", "sw2", "worst_mode_ratio", "clip_score")

Row = Mapping[str, object]


def resample_indices(n: int, stream: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """[resamples, n] indices drawn with replacement; the same for every call with the same (n, stream, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return torch.randint(n, (resamples, n), generator=g)


def _counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    """[resamples, n] how often each index occurs in each row of idx."""
    return torch.zeros(len(idx), n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))


def group_of(n: int, groups: int = JACKKNIFE_GROUPS) -> torch.Tensor:
    """[n] each item's jackknife group: a fixed shuffle of 0..n-1 dealt round-robin into g = min(groups, n) groups.
    The same for every row at one n (rows stay paired), and exchangeable whatever order the items come in (by index
    mod g, labels that cycle with the index, class i mod 10, put one class in each group)."""
    group = torch.empty(n, dtype=torch.long)
    group[torch.randperm(n, generator=torch.Generator().manual_seed(JACKKNIFE_SEED))] = torch.arange(n) % min(groups, n)
    return group


def group_masks(n: int, groups: int = JACKKNIFE_GROUPS) -> torch.Tensor:
    """[g, n] float64 masks, row k zero on group k (group_of): what each deletion keeps."""
    return (group_of(n, groups)[None] != torch.arange(min(groups, n))[:, None]).double()


def jackknife_values(fn: Callable[[torch.Tensor, torch.Tensor], float], n_a: int, n_b: int,
                     groups: int = JACKKNIFE_GROUPS) -> list[list[float]]:
    """The leave-group values: [fn(kept_a, all_b) per deleted group of a], [fn(all_a, kept_b) per group of b]."""
    all_a, all_b = torch.arange(n_a), torch.arange(n_b)
    return [[fn(all_a[m.bool()], all_b) for m in group_masks(n_a, groups)],
            [fn(all_a, all_b[m.bool()]) for m in group_masks(n_b, groups)]]


def _side_variance(values: Sequence[float]) -> float:
    """(g - 1) / g * sum_k (theta_k - mean)^2: the delete-a-group jackknife variance from one side's g values."""
    v = torch.tensor(values, dtype=torch.float64)
    return (len(v) - 1) / len(v) * float((v - v.mean()).square().sum())


def jackknife_variance(values: Sequence[Sequence[float]], per_seed: Sequence[float] | None = None) -> float:
    """Variance of a (seed-mean) estimate from its leave-group values [samples side, reference side]: the reference
    side's jackknife, plus the samples side's, or, given S >= 2 per-seed estimates, their between-seed variance / S."""
    if per_seed is not None and len(per_seed) >= 2:
        sample_side = float(torch.tensor(per_seed, dtype=torch.float64).var()) / len(per_seed)
    else:
        sample_side = _side_variance(values[0])
    return sample_side + _side_variance(values[1])


def normal_interval(estimate: float, variance: float, level: float = LEVEL) -> tuple[float, float]:
    """estimate -+ z sd, z the normal quantile of the level."""
    half = NormalDist().inv_cdf((1 + level) / 2) * math.sqrt(variance)
    return estimate - half, estimate + half


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


def _clipped(metric: str, interval: tuple[float, float]) -> tuple[float, float]:
    """An interval clipped to the values the metric can take (a basic interval of a share near 1 can pass 1)."""
    low, high = _range(metric)
    return max(interval[0], low), min(interval[1], high)


def metric_interval(metric: str, estimate: float, replicates: Sequence[float],
                    trials: float | None = None) -> tuple[float, float]:
    """basic_interval, clipped to the values the metric can take; for a share of `trials` that every resample puts at
    0 or at 1 (every trial a miss, or a hit: the bootstrap's interval is the point), Clopper-Pearson's exact one."""
    if trials and _range(metric) == (0.0, 1.0) and estimate in (0.0, 1.0) and all(r == estimate for r in replicates):
        bound = ((1 - LEVEL) / 2) ** (1 / trials)
        return (bound, 1.0) if estimate == 1.0 else (0.0, 1 - bound)
    return _clipped(metric, basic_interval(estimate, replicates))


def jackknife_interval(metric: str, estimate: float, values: Sequence[Sequence[float]],
                       per_seed: Sequence[float] | None = None) -> tuple[float, float]:
    """normal_interval of jackknife_variance, clipped to the values the metric can take."""
    return _clipped(metric, normal_interval(estimate, jackknife_variance(values, per_seed)))


def _finite(estimate: float, values: Sequence) -> bool:
    """Whether the estimate and every replicate (or leave-group value, either side) are finite."""
    flat = [v for side in values for v in (side if isinstance(side, Sequence) else [side])]
    return math.isfinite(estimate) and all(math.isfinite(v) for v in flat)


def _summary(estimates: Mapping[str, float], replicates: Mapping[str, list[float]],
             jackknife: Mapping[str, list[list[float]]] | None = None,
             trials: Mapping[str, float] | None = None) -> dict:
    """Row fields: {metric}_lo / {metric}_hi, the bootstrap replicates and the jackknife's leave-group values (for
    paired differences) and how they were drawn. trials: the count a share is taken over (metric_interval).

    A metric whose estimate or any replicate is not finite (logp with every sample off the support) gets none."""
    kept = {k: reps for k, reps in replicates.items() if _finite(estimates[k], reps)}
    jack = {k: values for k, values in (jackknife or {}).items() if _finite(estimates[k], values)}
    out: dict = {}
    for k, reps in kept.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = metric_interval(k, estimates[k], reps, (trials or {}).get(k))
    for k, values in jack.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = jackknife_interval(k, estimates[k], values)
    out.update(bootstrap={k: [round(v, 7) for v in reps] for k, reps in kept.items()},
               bootstrap_resamples=BOOTSTRAP_RESAMPLES, bootstrap_seed=BOOTSTRAP_SEED)
    if jackknife is not None:
        out.update(jackknife={k: [[round(v, 9) for v in side] for side in values] for k, values in jack.items()},
                   jackknife_groups=JACKKNIFE_GROUPS, jackknife_grouping=JACKKNIFE_GROUPING)
    return out


def _means(hits: torch.Tensor, idx: torch.Tensor) -> list[float]:
    return hits.double()[idx].mean(1).tolist()


def _term_replicates(terms: Mapping[str, SampleMean], idx: torch.Tensor) -> dict[str, list[float]]:
    return {k: t.resampled(idx) for k, t in terms.items()}


def _trials(terms: Mapping[str, SampleMean] | None) -> dict[str, float]:
    return {k: t.trials() for k, t in (terms or {}).items()}


def mean_uncertainty(terms: Mapping[str, SampleMean], estimates: Mapping[str, float]) -> dict:
    """Bootstrap intervals of metrics that are means over samples (accuracies, agreement, CLIP score)."""
    n = len(next(iter(terms.values())).values) if terms else 0
    return _summary(estimates, _term_replicates(terms, resample_indices(n, SAMPLES)) if terms else {},
                    trials=_trials(terms))


def image_uncertainty(features: torch.Tensor, reference: torch.Tensor, estimates: Mapping[str, float],
                      terms: Mapping[str, SampleMean] | None = None, k: int = DEFAULT_K) -> dict:
    """Jackknife interval of fd; bootstrap intervals of precision, recall, and of the per-sample means in `terms`
    (accuracy, confidence, agreement, the captions accuracies, ...)."""
    i, j = resample_indices(len(features), SAMPLES), resample_indices(len(reference), REFERENCE)
    precision_hits, recall_hits = manifold_hits(features, reference, k)
    replicates = {"precision": _means(precision_hits, i), "recall": _means(recall_hits, j),
                  **_term_replicates(terms or {}, i)}
    fd = jackknife_values(lambda a, b: frechet_distance(features[a], reference[b]), len(features), len(reference))
    trials = {"precision": len(features), "recall": len(reference), **_trials(terms)}
    return _summary(estimates, replicates, {"fd": fd}, trials)


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
    """Jackknife interval of MMD against the reference draws; bootstrap intervals of sliced W2, of the per-sample
    means in `terms` (logp, logp_finite, agreement) and, given the mode centres, of mode coverage."""
    i, j = resample_indices(len(samples), SAMPLES), resample_indices(len(reference), REFERENCE)
    theta = random_directions(samples.shape[1])  # the directions of sliced_wasserstein2: project once
    pa, pb = samples.double() @ theta, reference.double() @ theta
    replicates = {"sw2": [projected_w2(pa[a], pb[b]) for a, b in zip(i, j)], **_term_replicates(terms or {}, i)}
    if centres is not None:
        replicates.update(_mode_replicates(samples, reference, centres, i, j))
    mmd = {"mmd": mmd_jackknife(samples, reference)}
    return _summary({k: estimates[k] for k in [*replicates, *mmd]}, replicates, mmd, _trials(terms))


def mmd_jackknife(samples: torch.Tensor, reference: torch.Tensor) -> list[list[float]]:
    """MMD's leave-group values (jackknife_values), from two weighted kernel passes instead of 2g evaluations."""
    wa, wb = group_masks(len(samples)), group_masks(len(reference))
    return [mmd2_weighted(samples, reference, wa, torch.ones(len(wa), len(reference))).tolist(),
            mmd2_weighted(samples, reference, torch.ones(len(wb), len(samples)), wb).tolist()]


def merge_uncertainty(row: Mapping, summary: Mapping) -> dict:
    """row with another summary's intervals added and its replicates merged into the row's `bootstrap` and
    `jackknife` dicts."""
    merged = {**row, **summary}
    for key in ("bootstrap", "jackknife"):
        if key in row or key in summary:
            merged[key] = {**row.get(key, {}), **summary.get(key, {})}
    return merged


def seed_draws(n_seeds: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """pool_seeds' draws: [resamples, n_seeds] seed positions drawn with replacement, and the within-seed replicate
    each draw reads: b for a seed's first draw in resample b, then b + 1, b + 2, ... (mod resamples) for repeats."""
    drawn = resample_indices(n_seeds, SEEDS, resamples, seed)
    repeats = (drawn[:, :, None] == drawn[:, None, :]).tril(-1).sum(2)  # earlier draws of the same seed
    return drawn, (torch.arange(resamples)[:, None] + repeats) % resamples


def pool_seeds(rows: Sequence[Row]) -> dict:
    """One row from the same setting measured at several noise seeds: each metric with an interval is the mean over
    seeds, with an interval that holds both seed-to-seed and sample-to-sample variation.

    Bootstrapped metrics get a two-stage (hierarchical) bootstrap: resample b draws S seeds with replacement (stage 1),
    and each drawn seed contributes one of its own sample bootstrap replicates (stage 2: a fresh one for each repeat
    of a seed); the pooled replicate is their mean (Davison & Hinkley, Bootstrap Methods and their Application, 1997,
    sec. 3.8; Saravanan et al. 2020, "Application of the hierarchical bootstrap to multi-level data in neuroscience").
    Resampling seeds alone would give a zero-width interval at one seed and a coarse one at a few; pooling every
    seed's samples into one sample would hide a setting whose seeds disagree. The two-stage interval is conservative
    when seeds differ only by sampling noise (for S seeds its variance is (2S - 1) / S times the mean's) and widens
    when they disagree beyond it; at one seed it is that seed's sample bootstrap exactly. A seed's first draw reads
    replicate b, so distinct seeds share the reference resample b; the draws depend only on the number of seeds, so
    rows pooled over the same seeds stay paired.

    Jackknifed metrics (FD, MMD) keep the seed-mean of each leave-group value; their variance (jackknife_variance)
    is the reference side's jackknife (one reference serves every seed, so its noise does not average out) plus, for
    the samples, the between-seed variance / S. Seeds are independent re-draws of the samples, so their spread
    measures the sampling noise of a seed's estimate directly, with any seed-to-seed disagreement in it, and does not
    inherit the jackknife's over-statement; with one seed there is no spread and the samples side's jackknife stands
    in. (At S = 2 the spread has one degree of freedom: the interval is rough, as any from two seeds.)

    The other fields are the first row's; `seeds` lists the seeds and `per_seed` each metric's value at each of them.
    """
    order = sorted(rows, key=lambda r: r["seed"])
    seeds = [r["seed"] for r in order]
    if len(set(seeds)) < len(seeds) or len({r["n"] for r in order}) > 1:
        raise ValueError(f"pool_seeds takes one row per seed at one n, got seeds {seeds}")
    boot, jack = (_shared(order, key) for key in ("bootstrap", "jackknife"))
    dropped = {f"{m}_{end}" for key in ("bootstrap", "jackknife") for m in rows[0].get(key, {}) for end in ("lo", "hi")}
    out = {k: v for k, v in rows[0].items() if k not in dropped}
    out.update(seeds=seeds, per_seed={m: [r[m] for r in order] for m in [*boot, *jack]}, bootstrap={})
    for m in [*boot, *jack]:
        out[m] = sum(r[m] for r in order) / len(order)
    if jack or "jackknife" in rows[0]:
        out["jackknife"] = {m: [torch.tensor([r["jackknife"][m][side] for r in order], dtype=torch.float64).mean(0)
                                .tolist() for side in (0, 1)] for m in jack}
    for m in jack:
        out[f"{m}_lo"], out[f"{m}_hi"] = jackknife_interval(m, out[m], out["jackknife"][m], out["per_seed"][m])
    if boot:
        drawn, replicate = seed_draws(len(order), len(order[0]["bootstrap"][boot[0]]))
    for m in boot:
        reps = torch.tensor([r["bootstrap"][m] for r in order], dtype=torch.float64)  # [seeds, resamples]
        out["bootstrap"][m] = [round(v, 7) for v in reps[drawn, replicate].mean(1).tolist()]
        out[f"{m}_lo"], out[f"{m}_hi"] = metric_interval(m, out[m], out["bootstrap"][m])
    return out


def _shared(rows: Sequence[Row], key: str) -> list[str]:
    """The metrics of the first row's `key` dict (bootstrap or jackknife) that every row has, drawn alike (rows
    written before a metric moved to the jackknife, or before it existed, lack it)."""
    first = rows[0].get(key, {})
    return [m for m in first if all(m in r.get(key, {}) and _drawn(r, key, m) == _drawn(rows[0], key, m) for r in rows)]


def _drawn(row: Row, key: str, metric: str) -> object:
    """How a row's replicates of a metric were drawn: the bootstrap's count, or the jackknife's grouping and each
    side's number of groups (leave-group values of different groupings neither pair nor average)."""
    values = row[key][metric]
    return len(values) if key == "bootstrap" else (row.get("jackknife_grouping"), [len(side) for side in values])


def _row(row: Row | Sequence[Row]) -> Row:
    """A row, or the seed-pooled row of a list of one setting's rows at several seeds."""
    return pool_seeds(row) if isinstance(row, (list, tuple)) else row


def _jackknife_of(row_a: Row, row_b: Row, metric: str, op: Callable[[float, float], float]
                  ) -> tuple[list[list[float]], list[float] | None] | None:
    """op of the two rows' leave-group values (paired: the same groups are deleted at the same n), and of their
    per-seed estimates when both are pooled over the same seeds; None when the groups differ (another n, or a row
    grouped by index mod g, before jackknife_grouping was recorded)."""
    if _drawn(row_a, "jackknife", metric) != _drawn(row_b, "jackknife", metric):
        return None
    va, vb = row_a["jackknife"][metric], row_b["jackknife"][metric]
    values = [[op(x, y) for x, y in zip(sa, sb)] for sa, sb in zip(va, vb)]
    same_seeds = row_a.get("seeds") is not None and row_a.get("seeds") == row_b.get("seeds")
    per_seed = [op(x, y) for x, y in zip(row_a["per_seed"][metric], row_b["per_seed"][metric])] if same_seeds else None
    return values, per_seed


def _interval_of(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str,
                 op: Callable[[float, float], float]) -> tuple[float, float, float] | None:
    """(op(a, b), lo, hi) from the two rows' jackknife values or bootstrap replicates (paired when drawn alike); None
    without them, or when one row is jackknifed and the other (written before the jackknife) bootstrapped."""
    row_a, row_b = _row(row_a), _row(row_b)
    method = next((key for key in ("jackknife", "bootstrap") if all(metric in r.get(key, {}) for r in (row_a, row_b))),
                  None)
    estimate = op(row_a[metric], row_b[metric]) if method else math.nan
    if not math.isfinite(estimate):
        return None
    if method == "jackknife":
        paired = _jackknife_of(row_a, row_b, metric, op)
        if paired is None or not _finite(estimate, [*paired[0], paired[1] or []]):
            return None
        return (estimate, *normal_interval(estimate, jackknife_variance(*paired)))
    values = [op(a, b) for a, b in zip(row_a["bootstrap"][metric], row_b["bootstrap"][metric])
              if math.isfinite(op(a, b))]
    return (estimate, *basic_interval(estimate, values)) if values else None


def difference(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str
               ) -> tuple[float, float, float] | None:
    """a - b of a metric and its 95 % interval, or None when a row has no replicates. A list of one setting's rows
    at several seeds stands for their pool_seeds row."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a - b)


def ratio(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row], metric: str) -> tuple[float, float, float] | None:
    """a / b of a metric and its 95 % interval, or None when a row has no replicates (or b is 0)."""
    return _interval_of(row_a, row_b, metric, lambda a, b: a / b if b else math.nan)


def ties(row_a: Row | Sequence[Row], row_b: Row | Sequence[Row]) -> dict[str, bool]:
    """Per metric with replicates in both rows: does the difference's interval contain 0 (not resolved)? A list of
    one setting's rows at several seeds is pooled first (pool_seeds: seed and sample variation)."""
    row_a, row_b = _row(row_a), _row(row_b)
    out = {}
    for k in {**row_a.get("bootstrap", {}), **row_a.get("jackknife", {})}:
        d = difference(row_a, row_b, k)
        if d is not None:
            out[k] = d[1] <= 0 <= d[2]
    return out


def unresolved_share(rows: list[Row], reference: Row, metric: str) -> tuple[int, int]:
    """(how many rows, of those with intervals) are not resolved from `reference` on `metric`."""
    found = [ties(r, reference).get(metric) for r in rows if r is not reference]
    known = [t for t in found if t is not None]
    return sum(known), len(known)
