"""Quiet wall-clock of the caches (docs/BENCHMARKS.md §5): seconds per sample of each setting, interleaved, alone.

Usage: python benchmarks/accel_timing.py MODEL SPEC [SPEC ...] [--steps 18] [--batch 64] [--rounds 3]
       [--sampler heun] [--schedule karras] [--prompts captions:seen]   (a spec may be a peer's: peer:NAME:...)
A text-to-image model samples its prompt set (--prompts, as `fewstep bench` takes it) with its recorded CFG scale.
Each round times every spec once (warm-up, then the median of 5 batches, the ruler's protocol); the table reports the
median over rounds and the speed-up against the first spec, so a slow moment of the machine hits every setting alike.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fewstep.accel import apply_cache
from fewstep.core.schedules import make_schedule
from fewstep.metrics.cost import time_per_sample
from fewstep.data.prompts import fit_prompts
from fewstep.models.info import default_cfg_scale, prompt_cond
from fewstep.models.io import load_model
from fewstep.samplers import CFGDenoiser, generate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("specs", nargs="+")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sampler", default="heun")
    p.add_argument("--schedule", default="karras")
    p.add_argument("--prompts", default=None, help="a text-to-image model's prompt set (FILE | captions:seen | ...)")
    a = p.parse_args()
    model = load_model(a.model)
    sigmas = make_schedule(a.schedule, a.steps, model.denoiser.sigma_range)
    classes = model.info.num_classes
    labels = torch.arange(a.batch) % classes if classes else None
    denoiser = model.denoiser
    if model.prompt_encoder is not None:  # the prompts once, then the guided denoiser the ruler samples with
        labels = prompt_cond(model, fit_prompts(a.prompts, model.info.dataset, a.batch).prompts, a.batch)
        denoiser = CFGDenoiser(model.denoiser, default_cfg_scale(model))
    seconds: dict[str, list[float]] = {s: [] for s in a.specs}
    for _ in range(a.rounds):
        for spec in a.specs:
            handle = apply_cache(model, spec)
            seconds[spec].append(time_per_sample(
                lambda: generate(denoiser, model.info.shape, a.batch, sigmas, a.sampler, 0, labels,
                                 batch_size=a.batch), a.batch).seconds_per_sample)
            handle.remove()
    base = statistics.median(seconds[a.specs[0]])
    print(f"{a.model}, {a.sampler} ({a.schedule}) {a.steps} steps, batch {a.batch}, {torch.get_num_threads()} threads, {a.rounds} rounds")
    print("| setting | ms/sample | speed-up |\n|---|---|---|")
    for spec, values in seconds.items():
        med = statistics.median(values)
        print(f"| `{spec}` | {med * 1e3:.2f} | {base / med:.2f}× |")


if __name__ == "__main__":
    main()
