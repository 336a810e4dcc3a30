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


STAGES = ("train the digits teacher", "distill a one-step reflow student", "measure both on the ruler")


def stage(i: int, text: str) -> None:
    """Print a stage header: "[2/3] distill a one-step reflow student"."""
    print(f"\n[{i}/{len(STAGES)}] {STAGES[i - 1]}{text}", flush=True)


def add_seconds(out: Path, seconds: float) -> tuple[float, int]:
    """Add this run's seconds to out/demo.json; (total seconds, runs) over every run of this demo folder."""
    path = out / "demo.json"
    record = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "runs": 0}
    record = {"seconds": record["seconds"] + seconds, "runs": record["runs"] + 1}
    path.write_text(json.dumps(record))
    return record["seconds"], record["runs"]


def run_demo(out: str | Path = "fewstep-demo", preset: str = "small", device: str = "auto") -> Path:
    """Train (or resume) the teacher, distill a one-step reflow student, bench them; returns report.html.

    Every run (an interrupted one too) adds its seconds to out/demo.json, so the end says the time over all runs."""
    out, start = Path(out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = _stages(out, preset, device)
    finally:
        seconds = time.perf_counter() - start
        total, runs = add_seconds(out, seconds)
    rows = json.loads((out / "report" / "results.json").read_text())
    across = f"; {total:.0f} s over all {runs} runs of this folder (resumes included)" if runs > 1 else ""
    print(f"\n{summary_table(rows)}\n\n{headline(rows)}\n\nreport: {report}\n"
          f"demo finished: this run took {seconds:.0f} s{across}")
    return report


def _stages(out: Path, preset: str, device: str) -> Path:
    """The demo's three stages, each skipped when its output exists (a finished run) or resumed."""
    settings = DEMO_SETTINGS.get(preset, DEMO_SETTINGS["small"])
    teacher = out / "teacher"
    stage(1, f" ({preset} preset) in {teacher}")
    if (teacher / "model" / "fewstep.json").exists():
        print(f"teacher already trained: {teacher / 'model'}")
    else:
        resume = (teacher / "checkpoints").exists()
        cfg = resolve_train_config({"dataset": "digits", "preset": preset, "device": device}, out=teacher,
                                   resume=resume)
        train_teacher(cfg, teacher, resume=resume)
    student = out / "student"
    stage(2, f" in {student}")
    if not (student / "model" / "fewstep.json").exists():
        cfg = resolve_distill_config({"teacher": str(teacher), "method": "reflow", "steps": "1", "preset": preset,
                                      "device": device, "train_steps": settings["train_steps"]}, out=student,
                                     resume=True)
        distill(cfg, student, resume=True)
    stage(3, f" (n = {settings['n']}) in {out / 'report'}")
    bench_device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    suite = Suite(teacher=str(teacher), n=settings["n"], device=bench_device,
                  samplers=SamplerGrid(names=["euler", "dpmpp_2m"], schedules=["karras_trailing"], nfe=[1, 4]),
                  students=[StudentEntry(str(student / "model"), [1])])
    return run_bench(suite, out / "report")
