"""`fewstep demo`: the main job on a fresh machine — train the small digits teacher and show its samples."""

from __future__ import annotations

import time
from pathlib import Path

from fewstep.train.teacher import resolve_train_config, train_teacher


def run_demo(out: str | Path = "fewstep-demo", preset: str = "small", device: str = "auto") -> Path:
    """Train (or resume) a digits teacher under out/teacher and write out/teacher/samples/final.png."""
    out = Path(out)
    run_dir = out / "teacher"
    model_dir = run_dir / "model"
    start = time.perf_counter()
    if (model_dir / "fewstep.json").exists():
        print(f"teacher already trained: {model_dir}")
    else:
        resume = (run_dir / "checkpoints").exists()
        cfg = resolve_train_config({"dataset": "digits", "preset": preset, "device": device}, out=run_dir, resume=resume)
        train_teacher(cfg, run_dir, resume=resume)
    grid = run_dir / "samples" / "final.png"
    print(f"digits teacher: {model_dir}\nsample grid (18 Heun steps, 35 NFE): {grid}\n"
          f"demo finished in {time.perf_counter() - start:.0f} s")
    return grid
