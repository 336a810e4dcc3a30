"""Paired agreement of each cache with the uncached teacher (docs/BENCHMARKS.md §9): the same noise, the same sampler
and steps, with and without the cache; RMSE of the samples. Finer than FD, whose floor at small n hides small changes.

Usage: python benchmarks/cache_agreement.py SUITE_TOML OUT_JSON [--n 64]
Reads the teacher, the [[accelerators]] caches and the [samplers] NFE of a bench suite; samples seed 0 at the teacher's
recorded setting, and with no cache at each of the suite's fewer steps (the plain sampler at equal cost).
"""

from __future__ import annotations

import argparse
import json

import torch

from fewstep.bench.evaluate import steps_for_nfe
from fewstep.bench.suite import read_suite
from fewstep.models.io import load_model
from fewstep.plan import PlanSettings, build_plan, sample


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("suite")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=64)
    a = p.parse_args()
    suite = read_suite(a.suite)
    model = load_model(suite.teacher)
    labels = torch.arange(a.n) % model.info.num_classes if model.info.num_classes else None
    plain = sample(model, build_plan(model), a.n, 0, labels).samples
    scale = float(plain.pow(2).mean().sqrt())
    out = {}
    settings = {row.cache: PlanSettings(cache=row.cache) for row in suite.accelerators if row.cache}
    for nfe in suite.samplers.nfe if suite.samplers else []:
        settings[f"{model.info.sampler['name']}:nfe={nfe}"] = PlanSettings(steps=steps_for_nfe(build_plan(model).sampler,
                                                                                              nfe))
    for spec, setting in settings.items():
        cached = sample(model, build_plan(model, setting), a.n, 0, labels).samples
        rmse = float((cached - plain).pow(2).mean().sqrt())
        out[spec] = {"rmse_vs_uncached": rmse, "relative": rmse / scale, "n": a.n}
        print(f"{spec}: RMSE vs uncached {rmse:.4f} ({rmse / scale:.2%} of the samples' RMS)")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
