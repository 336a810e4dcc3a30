"""`fewstep demo`: the main job on a fresh machine — train the small digits teacher, distill a one-step student,
measure both side by side on the ruler, and print where the report is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fewstep.bench.report import headline, summary_table
from fewstep.bench.run import run_bench
from fewstep.bench.suite import SamplerGrid, StudentEntry, Suite
from fewstep.distill import distill, resolve_distill_config
from fewstep.train.teacher import resolve_train_config, train_teacher

# per preset: the student's optimiser steps (None = the distill preset's) and the bench's sample count.
# small: reflow is the best one-step method on digits (docs/BENCHMARKS.md §4); 800 steps keep the whole demo inside
# 30 minutes on 2 CPU cores.
DEMO_SETTINGS = {"small": {"train_steps": 800, "n": 1000}, "tiny": {"train_steps": None, "n": 32}}


def run_demo(out: str | Path = "fewstep-demo", preset: str = "small", device: str = "auto") -> Path:
    """Train (or resume) the teacher, distill a one-step reflow student, bench them; returns report.html."""
    out, start = Path(out), time.perf_counter()
    settings = DEMO_SETTINGS.get(preset, DEMO_SETTINGS["small"])
    teacher = out / "teacher"
    if (teacher / "model" / "fewstep.json").exists():
        print(f"teacher already trained: {teacher / 'model'}")
    else:
        resume = (teacher / "checkpoints").exists()
        cfg = resolve_train_config({"dataset": "digits", "preset": preset, "device": device}, out=teacher,
                                   resume=resume)
        train_teacher(cfg, teacher, resume=resume)
    student = out / "student"
    if not (student / "model" / "fewstep.json").exists():
        cfg = resolve_distill_config({"teacher": str(teacher), "method": "reflow", "steps": "1", "preset": preset,
                                      "device": device, "train_steps": settings["train_steps"]}, out=student,
                                     resume=True)
        distill(cfg, student, resume=True)
    bench_device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    suite = Suite(teacher=str(teacher), n=settings["n"], device=bench_device,
                  samplers=SamplerGrid(names=["euler", "dpmpp_2m"], schedules=["karras_trailing"], nfe=[1, 4]),
                  students=[StudentEntry(str(student / "model"), [1])])
    report = run_bench(suite, out / "report")
    rows = json.loads((out / "report" / "results.json").read_text())
    print(f"\n{summary_table(rows)}\n\n{headline(rows)}\n\nreport: {report}\n"
          f"demo finished in {time.perf_counter() - start:.0f} s")
    return report
