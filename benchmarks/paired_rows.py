"""Paired differences (and FD ratios) of result rows against a reference row drawn on the same seeds: the interval of
a difference comes from the two rows' per-resample (per-deleted-group) values (fewstep.metrics.uncertainty), so it is
much narrower than the two rows' own intervals side by side.

    python benchmarks/paired_rows.py STUDENTS.jsonl REFERENCE.jsonl --match split --metrics prompt_accuracy fd

Each row of STUDENTS is compared with the REFERENCE row that has the same --match fields; one Markdown line each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fewstep.core.files import read_json_lines
from fewstep.metrics.uncertainty import difference, ratio


def cell(value: tuple[float, float, float] | None, null: float = 0.0, form: str = "{:+.3g}") -> str:
    """'estimate [lo, hi]', marked 'not resolved' when the interval holds null (0 for differences, 1 for ratios)."""
    if value is None:
        return "–"
    est, lo, hi = (form.format(v) for v in value)
    return f"{est} [{lo}, {hi}]" + (" not resolved" if value[1] <= null <= value[2] else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", type=Path)
    p.add_argument("reference", type=Path)
    p.add_argument("--match", nargs="*", default=["split"], help="fields a row and its reference share")
    p.add_argument("--metrics", nargs="+", default=["prompt_accuracy", "fd"])
    p.add_argument("--label", nargs="+", default=["model", "steps", "split"], help="fields that name a row")
    args = p.parse_args()
    references = read_json_lines(args.reference)
    print("| " + " | ".join(args.label + [f"Δ {m}" for m in args.metrics] + ["fd ratio"]) + " |")
    print("|" + "---|" * (len(args.label) + len(args.metrics) + 1))
    for row in read_json_lines(args.rows):
        ref = next((r for r in references if all(r.get(k) == row.get(k) for k in args.match)), None)
        if ref is None:
            continue
        cells = [str(row.get(k)) for k in args.label]
        cells += [cell(difference(row, ref, m)) for m in args.metrics]
        cells.append(cell(ratio(row, ref, "fd") if "fd" in row else None, 1.0, "{:.2f}×"))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
