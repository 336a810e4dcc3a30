"""A distillation's learning curve: `fewstep distill` run in segments (each one resumes the last: the same run as one
uninterrupted job), the student exported after each segment scored by `fewstep eval`, one JSON row per segment with
its training step; then FD (with its interval) and recall against the step, the reference model's row as a line.

    python benchmarks/distill_curve.py OUT --every 250 --total 1500 --reference TEACHER \
        -- --teacher TEACHER --method dmd2 --steps 1 --preset small --dmd-regression-weight 1
    python benchmarks/distill_curve.py OUT --replot [--with OUT2 ...] [--plot FILE] [--no-fd-band]   # redraw

Rows go to OUT/curve.jsonl (a segment already there is not re-run); the plot to OUT/curve.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from fewstep.core.files import append_json_lines, read_json_lines


def fewstep(*argv: str) -> str:
    """Run one fewstep command; its stdout (progress and logs stream to stderr and the terminal)."""
    return subprocess.run(["fewstep", *argv], check=True, stdout=subprocess.PIPE, text=True).stdout


def score(model: Path, eval_args: list[str], results: Path) -> dict:
    """The eval row of MODEL (the last JSON line `fewstep eval --json` prints; its results file is the curve's own,
    so two curves can run side by side)."""
    out = fewstep("eval", "--model", str(model), "--json", "--no-agreement", "--results", str(results), *eval_args)
    return json.loads(out.strip().splitlines()[-1])


def run(out: Path, every: int, total: int, distill: list[str], eval_args: list[str], reference: str | None) -> None:
    """Distill OUT/run segment by segment up to TOTAL steps, scoring each segment's student into OUT/curve.jsonl."""
    rows = out / "curve.jsonl"
    done = {r["train_step"] for r in read_json_lines(rows)}
    if reference and "reference" not in done:
        write(rows, {**score(Path(reference), eval_args, out / "results.jsonl"), "train_step": "reference"})
    for step in range(every, total + 1, every):
        if step in done:
            continue
        resume = ["--resume"] if (out / "run" / "train" / "checkpoints").exists() else distill
        fewstep("distill", "--out", str(out / "run"), "--train-steps", str(step), *resume)
        write(rows, {**score(out / "run", eval_args, out / "results.jsonl"), "train_step": step})


def write(path: Path, row: dict) -> None:
    append_json_lines(path, [row])
    print(f"step {row['train_step']}: fd {row.get('fd')}, recall {row.get('recall')}", flush=True)


def plot(outs: list[Path], path: Path, fd_band: bool = True) -> None:
    """FD [interval] and recall against training steps, one line per curve (named by its folder); the first
    curve's reference row as a dashed line. `fd_band` False leaves out FD's intervals (each row's own, unpaired: on
    digits they span 0 to 3 and hide the lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, out in enumerate(outs):
        rows = read_json_lines(out / "curve.jsonl")
        ref = next((r for r in rows if r["train_step"] == "reference"), None)
        seg = sorted((r for r in rows if r["train_step"] != "reference"), key=lambda r: r["train_step"])
        steps = [r["train_step"] for r in seg]
        for ax, key in zip(axes, ("fd", "recall")):
            ax.plot(steps, [r[key] for r in seg], "o-", label=out.name)
            if seg and f"{key}_lo" in seg[0] and (fd_band or key != "fd"):
                ax.fill_between(steps, [r[f"{key}_lo"] for r in seg], [r[f"{key}_hi"] for r in seg], alpha=0.2)
            if ref and i == 0:
                ax.axhline(ref[key], ls="--", c="k", label="teacher")
    for ax, key in zip(axes, ("fd", "recall")):
        ax.set_xlabel("training steps")
        ax.set_ylabel(key)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--every", type=int, default=250, help="training steps per segment")
    p.add_argument("--total", type=int, default=1500, help="training steps in all")
    p.add_argument("--eval", default="--n 2000", help="fewstep eval flags for every row (one string)")
    p.add_argument("--reference", help="a model scored once with the same flags (the teacher), drawn as a line")
    p.add_argument("--replot", action="store_true", help="only redraw the plot from OUT/curve.jsonl")
    p.add_argument("--with", dest="others", nargs="*", type=Path, default=[], help="more curves' folders to draw")
    p.add_argument("--plot", type=Path, help="where the plot goes (default OUT/curve.png)")
    p.add_argument("--no-fd-band", action="store_true", help="draw FD without its intervals")
    args, distill = p.parse_known_args()
    distill = [a for a in distill if a != "--"]
    if not args.replot:
        run(args.out, args.every, args.total, distill, args.eval.split(), args.reference)
    plot([args.out, *args.others], args.plot or args.out / "curve.png", fd_band=not args.no_fd_band)


if __name__ == "__main__":
    main()
