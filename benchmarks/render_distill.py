"""Render a distillation benchmark folder (benchmarks/distill.sh) as the markdown table in docs/BENCHMARKS.md.

Usage: python benchmarks/render_distill.py OUT_DIR [--grids TEACHER_RUN PNG]
  reads OUT_DIR/students.jsonl and OUT_DIR/teacher.jsonl; --grids also writes the one-step students' sample grids
  (seed 0, labels cycling: the same noise for all) beside the teacher's converged grid as one PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewstep.bench.evaluate import quality_key


def fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def latest(rows: list[dict], key) -> list[dict]:
    """The last row for each key (results files only grow; a re-run supersedes an earlier row)."""
    return list({key(r): r for r in rows}.values())


def student_run(row: dict) -> str:
    """The student's run folder under OUT_DIR (the row names its model folder, model/ or model-<N>step/)."""
    path = Path(row["model"])
    return path.parent.name if path.name == "model" or path.name.startswith("model-") else path.name


def distill_minutes(row: dict) -> float | None:
    info = json.loads((Path(row["model"]) / "fewstep.json").read_text())
    seconds = info["extra"].get("distill", {}).get("distill_seconds")
    return None if seconds is None else seconds / 60


def table(out: Path) -> str:
    students = latest(read(out / "students.jsonl"), lambda r: (Path(r["model"]).resolve(), r["nfe"]))
    teacher = latest(read(out / "teacher.jsonl"), lambda r: (r["sampler"], r["schedule"], r["nfe"]))
    q = quality_key((students or teacher)[0])
    extra = ["precision", "recall", "accuracy"] if q == "fd" else ["mmd", "logp"]
    head = ["model", "sampler (schedule)", "NFE", q, *extra, "vs best sampler at this NFE", "agreement RMSE",
            "ms/sample", "distill cost (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {}
    for r in teacher:
        if r["nfe"] not in best or r[q] < best[r["nfe"]][q]:
            best[r["nfe"]] = r
    converged = max(teacher, key=lambda r: r["nfe"]) if teacher else None

    def line(name: str, r: dict, cost: float | None) -> str:
        ref = best.get(r["nfe"])
        ratio = f"{r[q] / ref[q]:.3g}×" if ref is not None and ref is not r else ""
        cells = [name, f"{r['sampler']} ({r['schedule']})", r["nfe"], r[q], *(r.get(k, float("nan")) for k in extra),
                 ratio, r.get("agreement_rmse", float("nan")), r["seconds_per_sample"] * 1e3,
                 "" if cost is None else cost]
        return "| " + " | ".join(fmt(c) for c in cells) + " |"

    for r in sorted(students, key=lambda r: (r["method"], student_run(r), r["nfe"])):
        run = student_run(r)
        lines.append(line(f"**{r['method']}** student" + (f" ({run})" if run != r["method"] else ""), r,
                          distill_minutes(r)))
    for nfe in sorted(best):
        if best[nfe] is not converged:
            lines.append(line("teacher, best training-free sampler", best[nfe], None))
    if converged is not None:
        info = json.loads((Path(converged["model"]) / "fewstep.json").read_text())
        lines.append(line("teacher, converged", converged, info["extra"].get("train_seconds", 0) / 60))
    r0 = (students or teacher)[0]
    floor = ", ".join(f"{k} {fmt(r0[k + '_floor'])}" for k in [q, *extra] if k + "_floor" in r0)
    lines.append(f"\nData floor (real vs real, n = {r0.get('floor_n', r0['n'])}): {floor}. n = {r0['n']} samples, "
                 f"seed {r0['seed']}, timing batch {r0['timing_batch']}, {r0['machine']['cpu_count']} CPU cores, "
                 f"torch {r0['versions']['torch']}, {r0['time_utc'][:10]}. The teacher's cost is its training time; "
                 "a student's is its distillation time (teacher pairs included for reflow).")
    return "\n".join(lines)


def one_step_grids(out: Path, teacher_run: Path, path: Path) -> Path:
    """The teacher's converged grid and every method's one-step grid side by side, each titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    panels = [("teacher, 35 NFE", teacher_run / "samples" / "final.png")]
    for run in ("progressive", "lightning", "reflow", "add", "consistency", "dmd2", "dmd2-gan"):
        grid = out / run / "samples" / ("model-1step.png" if run in ("progressive", "lightning") else "model.png")
        if grid.exists():
            panels.append((f"{run}, 1 NFE", grid))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), dpi=110)
    for ax, (title, grid) in zip(axes, panels):
        ax.imshow(Image.open(grid), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    print(f"### {folder.name}\n\n{table(folder)}\n")
    if len(sys.argv) == 5 and sys.argv[2] == "--grids":
        print(f"wrote {one_step_grids(folder, Path(sys.argv[3]), Path(sys.argv[4]))}")
