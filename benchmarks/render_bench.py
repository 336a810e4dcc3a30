"""Render a `fewstep bench` output folder into docs/BENCHMARKS.md and copy its Pareto plots to docs/img.

Usage: python benchmarks/render_bench.py REPORT_DIR NAME
  replaces the text between <!-- bench:NAME --> and <!-- /bench:NAME --> in docs/BENCHMARKS.md with the report's
  table, headline and plots (docs/img/bench-NAME-<cost>.png).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from fewstep.bench.evaluate import quality_key
from fewstep.bench.report import converged_row, headline, label, speedup
from fewstep.metrics.floor import ties

COSTS = ("nfe", "flops_per_sample", "seconds_per_sample")


def markdown(rows: list[dict]) -> str:
    """The report's table as markdown: setting, NFE, quality (tie marked), recall, ms per sample, speed-up."""
    ref, q = converged_row(rows), quality_key(rows[0])
    head = ["setting", "NFE", q.upper(), "precision" if q == "fd" else "mmd", "recall" if q == "fd" else "logp",
            "GFLOPs/sample", "ms/sample", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tie = " (tie)" if r is not ref and ties(r, ref).get(q) else ""
        extra = (r["precision"], r["recall"]) if q == "fd" else (r["mmd"], r["logp"])
        lines.append(f"| {label(r)} | {r['nfe']} | {r[q]:.3g}{tie} | {extra[0]:.3g} | {extra[1]:.3g} | "
                     f"{r['flops_per_sample'] / 1e9:.3g} | {r['seconds_per_sample'] * 1e3:.3g} | "
                     f"{speedup(r, ref):.3g}× |")
    return "\n".join(lines) + f"\n\nData floor ({q}, real vs real): {ref[q + '_floor']:.3g}. {headline(rows)}"


def embed(doc: Path, name: str, text: str) -> None:
    """Replace the marked block of `doc` named `name` with `text`."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = doc.read_text()
    if start not in body or end not in body:
        raise SystemExit(f"{doc} has no {start} ... {end} block")
    head, rest = body.split(start, 1)
    doc.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    folder, name = Path(sys.argv[1]), sys.argv[2]
    rows = json.loads((folder / "results.json").read_text())
    plots = []
    for cost in COSTS:
        shutil.copy(folder / f"pareto-{cost}.png", Path("docs/img") / f"bench-{name}-{cost}.png")
        plots.append(f"![quality vs {cost}](img/bench-{name}-{cost}.png)")
    embed(Path("docs/BENCHMARKS.md"), name, f"{markdown(rows)}\n\n" + " ".join(plots))
    print(f"updated docs/BENCHMARKS.md ({name}) from {folder}")
