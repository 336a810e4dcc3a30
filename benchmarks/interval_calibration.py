"""Calibrate the ruler's intervals against independent re-draws: for each metric, the spread of the estimate over
fresh samples and fresh references (the truth the interval should describe), beside the bootstrap replicates (mean,
sd, basic interval) and the grouped jackknife (sd, interval) computed from one draw.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/interval_calibration.py [--n 500] [--redraws 8]

Sets: FD / precision / recall in the captions ruler's 128-d attribute features (real renders, and renders with noise
0.3 added, against real renders of the same captions), FD in the digits feature network (disjoint subsets of the
real pool), MMD and sliced W2 on 8gaussians (fresh draws of the true law, and a widened copy).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

import torch

from fewstep.data import load_dataset
from fewstep.data.captions import caption_prompts, render
from fewstep.metrics.captions import RULER_CONFIG, attribute_network
from fewstep.metrics.features import feature_network
from fewstep.metrics.image import frechet_distance, manifold_hits, precision_recall, reference_features
from fewstep.metrics.toy import fresh_samples, mmd2, sliced_wasserstein2
from fewstep.metrics.uncertainty import (REFERENCE, SAMPLES, basic_interval, jackknife_values, jackknife_variance,
                                         mmd_jackknife, normal_interval, resample_indices)

Draw = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # redraw index -> (samples, reference)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def calibrate(name: str, draw: Draw, metric: Callable[[torch.Tensor, torch.Tensor], float], redraws: int,
              jackknife: Callable[[torch.Tensor, torch.Tensor], list[list[float]]] | None = None,
              bootstrap: Callable[[torch.Tensor, torch.Tensor], list[float]] | None = None) -> None:
    """One line: the independent re-draws' mean and sd, then the bootstrap and jackknife of draw 0."""
    fresh = torch.tensor([metric(*draw(r)) for r in range(redraws)], dtype=torch.float64)
    a, b = draw(0)
    est = metric(a, b)
    if bootstrap is None:
        i, j = resample_indices(len(a), SAMPLES), resample_indices(len(b), REFERENCE)
        reps = [metric(a[x], b[y]) for x, y in zip(i, j)]
    else:
        reps = bootstrap(a, b)
    boot = torch.tensor(reps, dtype=torch.float64)
    values = (jackknife or (lambda a, b: jackknife_values(lambda x, y: metric(a[x], b[y]), len(a), len(b))))(a, b)
    var = jackknife_variance(values)
    lo, hi = basic_interval(est, reps)
    jlo, jhi = normal_interval(est, var)
    print(f"{name:28s} est {_fmt(est):>8s} | independent mean {_fmt(float(fresh.mean())):>8s} sd "
          f"{_fmt(float(fresh.std())):>7s} | bootstrap mean {_fmt(float(boot.mean())):>8s} sd "
          f"{_fmt(float(boot.std())):>7s} basic [{_fmt(lo)}, {_fmt(hi)}] | jackknife sd {_fmt(math.sqrt(var)):>7s} "
          f"[{_fmt(jlo)}, {_fmt(jhi)}]", flush=True)


def captions(n: int, redraws: int) -> None:
    """The captions ruler: renders of the first n seen captions at independent render seeds."""
    net = attribute_network(32, RULER_CONFIG)
    prompts = caption_prompts("seen", n)

    def features(seed: int, noise: float) -> torch.Tensor:
        x = render(prompts.attributes, 32, seed)
        if noise:
            x = (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1000))).clamp(-1, 1)
        return net.features(x)

    for noise in (0.0, 0.3):
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def draw(r: int) -> tuple[torch.Tensor, torch.Tensor]:
            if r not in cache:
                cache[r] = features(100 + r, noise), features(200 + r, 0.0)
            return cache[r]

        tag = f"captions{' noisy' if noise else ''}"
        calibrate(f"{tag} fd", draw, frechet_distance, redraws)
        for which, name in ((0, "precision"), (1, "recall")):
            def hits_boot(a, b, which=which):
                hits = manifold_hits(a, b)[which].double()
                return hits[resample_indices(len(hits), (SAMPLES, REFERENCE)[which])].mean(1).tolist()
            calibrate(f"{tag} {name}", draw, lambda a, b, which=which: precision_recall(a, b)[which], redraws,
                      bootstrap=hits_boot)


def digits(n: int, redraws: int) -> None:
    """The digits ruler: disjoint random subsets of the real pool's features as samples and reference."""
    data = load_dataset("digits")
    pool = reference_features(data, feature_network(data))

    def draw(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(r))
        return pool[order[:n]], pool[order[n:2 * n]]

    calibrate(f"digits fd ({pool.shape[1]}-d)", draw, frechet_distance, redraws)


def points(n: int, redraws: int) -> None:
    """8gaussians: fresh draws of the true law against fresh references, and a copy widened by 10 %."""
    data = load_dataset("8gaussians")
    for scale in (1.0, 1.1):
        def draw(r: int, scale: float = scale) -> tuple[torch.Tensor, torch.Tensor]:
            return scale * fresh_samples(data, n, 10 + r), fresh_samples(data, n, 5000 + r)

        tag = "8gaussians" + (f" x{scale}" if scale != 1 else "")
        calibrate(f"{tag} mmd", draw, mmd2, 4 * redraws, jackknife=mmd_jackknife)
        calibrate(f"{tag} sw2", draw, sliced_wasserstein2, 4 * redraws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--redraws", type=int, default=8)
    parser.add_argument("--sets", nargs="+", default=["captions", "digits", "points"])
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.sets:
        {"captions": captions, "digits": digits, "points": points}[name](args.n, args.redraws)


if __name__ == "__main__":
    main()
