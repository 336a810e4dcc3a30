"""The captions teacher under free word order (each pair named from either object, seeded): BENCHMARKS §13's check
that attribute binding, not the tokenizer, is what free order costs.

    python benchmarks/captions_free_order.py train RUN trained|frozen    # the small preset on free-order captions
    python benchmarks/captions_free_order.py eval RUN/model ROWS.jsonl   # 500 seen scenes, free-order prompts
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fewstep.data.captions import caption_of, caption_prompts, load_captions
from fewstep.metrics.captions import caption_quality
from fewstep.models import load_model
from fewstep.train.teacher import resolve_train_config, train_teacher

sys.path.insert(0, str(Path(__file__).parent))
from captions_eval import draw_captions  # noqa: E402

SHOWN = ("prompt_accuracy", "pair_accuracy", "swapped_rate", "first_object_accuracy", "second_object_accuracy", "fd")


def free(attributes: torch.Tensor, seed: int) -> list[str]:
    """Each row's caption, a pair named from slot 0 or slot 1 at random (seeded)."""
    rng = np.random.default_rng(seed)
    return [caption_of(row, slot1_first=bool(rng.random() < 0.5)) for row in attributes]


def train(out: str, text_encoder: str) -> None:
    """The small preset's teacher on the captions set with its training captions in free order."""
    data = load_captions(32)
    data = replace(data, train_text=free(data.meta["train_attributes"], 7))
    cfg = resolve_train_config({"dataset": "captions", "preset": "small", "text_encoder": text_encoder})
    train_teacher(cfg, out, data=data)


def evaluate(model_dir: str, rows: str) -> None:
    """500 seen scenes with free-order prompts, DPM-Solver++(2M) 15 Karras steps, CFG 3, seed 0."""
    captions = free(caption_prompts("seen", 500).attributes, 11)
    images, _, _ = draw_captions(load_model(model_dir), captions, "dpmpp_2m", "karras", 15, 3.0, 0, 250)
    quality = caption_quality(images, captions, "seen")
    row = {"model": model_dir, "order": "free",
           **{k: v for k, v in quality.items() if not isinstance(v, (dict, list))}}
    with open(rows, "a") as f:
        f.write(json.dumps(row) + "\n")
    print({k: row[k] for k in SHOWN})


if __name__ == "__main__":
    train(*sys.argv[2:4]) if sys.argv[1] == "train" else evaluate(*sys.argv[2:4])
