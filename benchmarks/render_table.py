"""Render results.jsonl files from `fewstep eval` as the markdown tables in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewstep.bench.evaluate import quality_key


def fmt(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    """One markdown table: quality with floors, agreement, NFE and cost per sampler and NFE."""
    q = quality_key(rows[0])
    extra = ["precision", "recall"] if q == "fd" else ["mmd", "logp"]
    head = ["sampler", "schedule", "steps", "NFE", q, *extra, "agreement RMSE", "MFLOPs/sample", "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["sampler"], r["schedule"], r["nfe"])):
        cells = [r["sampler"], r["schedule"], r["steps"], r["nfe"], r[q], *(r[k] for k in extra),
                 r.get("agreement_rmse", float("nan")), r["flops_per_sample"] / 1e6, r["seconds_per_sample"] * 1e3]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    floor = ", ".join(f"{k} {fmt(rows[0][k + '_floor'])}" for k in [q, *extra] if k + "_floor" in rows[0])
    r0 = rows[0]
    lines.append(f"\nData floor (real vs real, n = {r0.get('floor_n', r0['n'])}): {floor}. "
                 f"n = {r0['n']} samples, seed {r0['seed']}, timing batch {r0['timing_batch']}, "
                 f"{r0['machine']['cpu_count']} CPU cores, torch {r0['versions']['torch']}, {r0['time_utc'][:10]}.")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
        print(f"### {rows[0]['dataset']} ({Path(rows[0]['model']).parent.name})\n\n{table(rows)}\n")
