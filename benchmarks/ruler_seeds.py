"""How much the captions ruler itself moves a model's scores: the same samples (one model, one sampler setting, the
first n captions of a split, seed 0) scored by attribute networks trained alike but from different seeds (and so, on
another machine, from the same seed: its cache key includes a digest of the rendered training data).

    python benchmarks/ruler_seeds.py MODEL --seeds 0 1 2 --n 500 --setting dpmpp_2m:karras:15 --cfg-scale 3

One JSON line per ruler seed (prompt and per-attribute accuracy, FD, the ruler's hash) to stdout and --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from captions_eval import draw  # noqa: E402

from fewstep.core.files import append_json_lines  # noqa: E402
from fewstep.metrics.captions import AttributeConfig, caption_quality  # noqa: E402
from fewstep.models import load_model  # noqa: E402

KEYS = ("prompt_accuracy", "prompt_accuracy_lo", "prompt_accuracy_hi", "count_accuracy", "layout_accuracy",
        "shape_accuracy", "colour_accuracy", "size_accuracy", "fd", "attribute_net")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--split", default="seen")
    p.add_argument("--setting", default="dpmpp_2m:karras:15", help="SAMPLER:SCHEDULE:STEPS")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default=None, help="append the rows to this JSON-lines file")
    args = p.parse_args()
    sampler, schedule, steps = args.setting.split(":")
    images, prompts, _, _ = draw(load_model(args.model), sampler, schedule, int(steps), args.cfg_scale, args.split,
                                 args.n, 0, args.batch_size)
    for seed in args.seeds:
        quality = caption_quality(images, prompts.captions, args.split, config=AttributeConfig(seed=seed))
        row = {"model": args.model, "setting": args.setting, "split": args.split, "n": args.n, "ruler_seed": seed,
               **{k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items() if k in KEYS}}
        print(json.dumps(row), flush=True)
        if args.out:
            append_json_lines(args.out, [row])


if __name__ == "__main__":
    main()
