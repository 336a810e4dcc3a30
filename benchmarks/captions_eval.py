"""Score a captions text-to-image model on seen and held-out captions: prompt and per-attribute accuracy, FD /
precision / recall in the attribute network's features, each with its real-data floor, for each sampler setting.

    python benchmarks/captions_eval.py MODEL --n 500 --cfg-scale 3 --settings dpmpp_2m:karras:15 euler:karras:10 ...
    python benchmarks/captions_eval.py MODEL --cfg-interval 0,1 ...    # guidance only at sigma <= 1

Each setting is SAMPLER:SCHEDULE:STEPS; one JSON line per (setting, split) goes to stdout and to --out (appended).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from fewstep.data.captions import Prompts, caption_prompts
from fewstep.metrics.captions import caption_quality
from fewstep.models import load_model
from fewstep.plan import PlanSettings, build_plan, sample


def draw_captions(model, captions: list[str], sampler: str, schedule: str, steps: int, cfg_scale: float, seed: int,
                  batch_size: int, cfg_interval: tuple[float, float] | None = None):
    """The model's decoded images for the given captions: (images, nfe, seconds)."""
    cond = model.encode_prompts(captions)
    plan = build_plan(model, PlanSettings(sampler=sampler, steps=steps, schedule=schedule, cfg_scale=cfg_scale,
                                          cfg_interval=cfg_interval))
    start, n = time.perf_counter(), len(captions)
    result = sample(model, plan, n, seed=seed, cond=cond, batch_size=batch_size)
    images = torch.cat([model.decode(result.samples[i:i + batch_size]) for i in range(0, n, batch_size)])
    return images, result.nfe, time.perf_counter() - start


def draw(model, sampler: str, schedule: str, steps: int, cfg_scale: float, split: str, n: int, seed: int,
         batch_size: int, cfg_interval: tuple[float, float] | None = None, offset: int = 0):
    """The model's decoded images for captions offset..offset+n of a split: (images, prompts, nfe, seconds)."""
    prompts = caption_prompts(split, offset + n)
    prompts = Prompts(prompts.captions[offset:], prompts.attributes[offset:])
    images, nfe, seconds = draw_captions(model, prompts.captions, sampler, schedule, steps, cfg_scale, seed,
                                         batch_size, cfg_interval)
    return images, prompts, nfe, seconds


def score(model, sampler: str, schedule: str, steps: int, cfg_scale: float, split: str, n: int, seed: int,
          batch_size: int, grid: str | None = None, cfg_interval: tuple[float, float] | None = None,
          offset: int = 0) -> dict:
    """One row: the model's samples for captions offset..offset+n of a split, scored against their floors."""
    images, prompts, nfe, seconds = draw(model, sampler, schedule, steps, cfg_scale, split, n, seed, batch_size,
                                         cfg_interval, offset)
    if grid:  # the first 32 samples, 8 per row, beside the real renders of the same captions (grid-real.png)
        from fewstep.data.captions import render
        from fewstep.data.visualize import save_image_grid

        save_image_grid(images[:32], grid, nrow=8, upscale=2)
        save_image_grid(render(prompts.attributes[:32], images.shape[-1], 0), grid.replace(".png", "-real.png"),
                        nrow=8, upscale=2)
        print("\n".join(prompts.captions[:32]), file=sys.stderr)
    quality = caption_quality(images, prompts.captions, split)
    accuracy = quality["prompt_accuracy"]
    return {"sampler": sampler, "schedule": schedule, "steps": steps, "nfe": nfe, "cfg_scale": cfg_scale,
            "cfg_interval": cfg_interval, "seed": seed, "caption_offset": offset, "seconds": round(seconds, 1), **quality,
            "prompt_accuracy_std": round(math.sqrt(accuracy * (1 - accuracy) / n), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--settings", nargs="+", default=["dpmpp_2m:karras:15"], help="SAMPLER:SCHEDULE:STEPS")
    parser.add_argument("--splits", nargs="+", default=["seen", "heldout"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--cfg-interval", default=None, help="LO,HI: guide only at sigmas in [LO, HI]")
    parser.add_argument("--offset", type=int, default=0, help="score captions OFFSET..OFFSET+N (a set disjoint from "
                        "the reported first N, to choose settings on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--grid", default=None, help="save the first setting's first 32 samples here (.png)")
    parser.add_argument("--out", default=None, help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    model = load_model(args.model)
    interval = tuple(float(v) for v in args.cfg_interval.split(",")) if args.cfg_interval else None
    for setting in args.settings:
        sampler, schedule, steps = setting.split(":")
        for split in args.splits:
            row = score(model, sampler, schedule, int(steps), args.cfg_scale, split, args.n, args.seed,
                        args.batch_size, args.grid if setting == args.settings[0] and split == args.splits[0] else None,
                        interval, args.offset)
            row |= {"model": args.model, "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                    "load_average": round(os.getloadavg()[0], 1), "machine": platform.machine(),
                    "threads": torch.get_num_threads()}
            line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
