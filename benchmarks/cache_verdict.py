"""The transformer-cache goal, read off a `fewstep bench` folder (docs/BENCHMARKS.md §9): every cache and peer row
against the uncached teacher, and the verdict.

Usage: python benchmarks/cache_verdict.py REPORT_DIR [--agreement AGREEMENT.json] [--plot PREFIX] [--max-worse 0.02]
       [--min-flops-saving 2]   (AGREEMENT.json from benchmarks/cache_agreement.py adds the paired RMSE column;
       --plot writes PREFIX-flops_per_sample.png and PREFIX-seconds_per_sample.png: paired RMSE vs each cost)
Goal: a fewstep cache with FD at most 2 % worse than the uncached teacher's converged setting, at least 2x fewer FLOPs,
and at least as fast as the fastest peer setting at that quality. A FD difference smaller than the data floor (real vs
real at the same n) is marked "not resolved": the ruler cannot tell the two apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewstep.bench.report import converged_row, label
from fewstep.metrics.floor import ties


def plot_paired(rows: list[dict], paired: dict, cost: str, path: str) -> None:
    """Paired RMSE to the uncached teacher vs one cost, one line per family (the uncached teacher at RMSE 0 is drawn
    at the bottom edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for family in dict.fromkeys(r["family"] for r in rows):
        pts = sorted((r[cost], paired.get(r.get("cache") or f"{r['sampler']}:nfe={r['nfe']}", {}).get(
            "rmse_vs_uncached", 0.0 if r["role"] == "converged" else None)) for r in rows if r["family"] == family)
        pts = [(x, max(y, 1e-3)) for x, y in pts if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="*" if family.startswith("teacher") else "o", ms=10 if family.startswith(
                "teacher") else 5, lw=1, label=family)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(cost.replace("_", " "))
    ax.set_ylabel("RMSE to the uncached teacher (paired)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("report")
    p.add_argument("--agreement", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--max-worse", type=float, default=0.02)
    p.add_argument("--min-flops-saving", type=float, default=2.0)
    a = p.parse_args()
    rows = [json.loads(line) for line in (Path(a.report) / "results.jsonl").read_text().splitlines() if line]
    ref = converged_row(rows)
    paired = json.loads(Path(a.agreement).read_text()) if a.agreement else {}
    print(f"uncached: {label(ref)}: FD {ref['fd']:.4g} (floor {ref['fd_floor']:.3g}, n = {ref['n']}), "
          f"{ref['flops_per_sample'] / 1e9:.3g} GFLOPs, {ref['seconds_per_sample'] * 1e3:.3g} ms per sample\n")
    print("| setting | FD | vs uncached | resolved? | RMSE to converged | RMSE to uncached | GFLOPs | FLOPs saved "
          "| ms/sample | calls |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    passing = []
    for r in rows:
        worse = r["fd"] / ref["fd"] - 1
        resolved = "—" if r is ref else ("not resolved" if ties(r, ref).get("fd") else "resolved")
        saving = ref["flops_per_sample"] / r["flops_per_sample"]
        stats = r.get("cache_stats") or {}
        calls = (f"{stats['full_calls']} / {stats['cached_calls']}" if "full_calls" in stats
                 else str(stats.get("network_calls", "")))
        key = r.get("cache") or f"{r['sampler']}:nfe={r['nfe']}"  # a plain sampler row: cache_agreement's name
        pair = paired.get(key, {}).get("rmse_vs_uncached")
        pair = "0" if r is ref else ("—" if pair is None else f"{pair:.4f}")
        print(f"| {label(r)} | {r['fd']:.4g} | {worse:+.1%} | {resolved} | {r.get('agreement_rmse', float('nan')):.4f} "
              f"| {pair} "
              f"| {r['flops_per_sample'] / 1e9:.3g} | {1 - 1 / saving:.0%} | {r['seconds_per_sample'] * 1e3:.3g} "
              f"| {calls} |")
        if r["role"] == "accelerator" and worse <= a.max_worse:
            passing.append((r, saving))
    if a.plot and paired:
        for cost in ("flops_per_sample", "seconds_per_sample"):
            plot_paired(rows, paired, cost, f"{a.plot}-{cost}.png")
    ours = [(r, s) for r, s in passing if not (r.get("cache") or "").startswith("peer:")]
    peers = [(r, s) for r, s in passing if (r.get("cache") or "").startswith("peer:")]
    print(f"\nrows with FD at most {a.max_worse:.0%} worse than uncached:")
    for name, group in (("fewstep", ours), ("peers", peers)):
        for r, s in sorted(group, key=lambda rs: rs[0]["seconds_per_sample"]):
            print(f"- {name}: {r['cache']}: {s:.2f}x fewer FLOPs, {r['seconds_per_sample'] * 1e3:.3g} ms/sample")
    best_ours = min((rs for rs in ours if rs[1] >= a.min_flops_saving), key=lambda rs: rs[0]["seconds_per_sample"],
                    default=None)
    best_peer = min(peers, key=lambda rs: rs[0]["seconds_per_sample"], default=None)
    if best_ours is None:
        print(f"\nverdict: no fewstep cache reaches {a.min_flops_saving:g}x fewer FLOPs at that quality")
        return
    r, s = best_ours
    line = f"\nverdict: {r['cache']} ({s:.2f}x fewer FLOPs, {r['seconds_per_sample'] * 1e3:.3g} ms/sample)"
    if best_peer is None:
        print(line + "; no peer setting reaches that quality")
    else:
        q, t = best_peer
        faster = "at least as fast as" if r["seconds_per_sample"] <= q["seconds_per_sample"] else "slower than"
        print(line + f" is {faster} the fastest peer at that quality, {q['cache']} ({t:.2f}x fewer FLOPs, "
              f"{q['seconds_per_sample'] * 1e3:.3g} ms/sample), in the bench's own timing")


if __name__ == "__main__":
    main()
