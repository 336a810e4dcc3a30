"""Render benchmarks/search.sh's results (OUT/search.jsonl, OUT/seeds/seeds.json) as a markdown table and a plot of
accuracy, FD and recall against total NFE (docs/BENCHMARKS.md §8)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def family(row: dict) -> str:
    """Which curve a row belongs to."""
    who = "student" if row["method"] != "sampler" else "teacher"
    if row.get("cache"):
        return f"(d) {who} {row['sampler']} {row['steps']} steps + {row['cache']} + best-of-N"
    if not row.get("search"):
        return f"(a) {who}, more {row['sampler']} steps"
    kind = row["search"].split(":")[0] + (" (accept)" if "accept=" in row["search"] else "")
    return f"({'c' if who == 'student' else 'b'}) {who} {row['sampler']} {row['steps']} step(s) + {kind}"


def binomial_sd(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1 / n) / n)  # at p = 1 the sd of one error in n stands in


def table(rows: list[dict]) -> str:
    head = ["curve", "search", "total NFE", "GFLOPs/sample (verifier)", "accuracy ± sd", "fd", "precision", "recall",
            "kept plain", "verifier log p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (family(r), r["nfe"])):
        search = r.get("search") or "—"
        vflops = r.get("verifier_flops_per_sample", 0) / 1e9
        cells = [family(r), re.sub(r",?verifier=[^,]*", "", search), r["nfe"], f"{r['flops_per_sample'] / 1e9:.3g} ({vflops:.2g})",
                 f"{r['accuracy']:.3f} ± {binomial_sd(r['accuracy'], r['n']):.3f}", f"{r['fd']:.3g}",
                 f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r.get('kept_plain_fraction', 1):.2f}",
                 f"{r['mean_verifier_score']:.3f}" if "mean_verifier_score" in r else "—"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    r0 = rows[0]
    lines.append(f"\nRuler: the seed-0 feature network (`{r0['feature_net']}`); verifier of every search row: "
                 f"{r0.get('verifier') or next(r['verifier'] for r in rows if r.get('verifier'))} "
                 f"(ruler_independent = {all(r.get('ruler_independent', True) for r in rows)}). Data floor "
                 f"(real vs real, n = {r0['n']}): fd {r0['fd_floor']:.3g}, precision {r0['precision_floor']:.3f}, "
                 f"recall {r0['recall_floor']:.3f}, accuracy {r0['accuracy_floor']:.3f}. n = {r0['n']}, seed "
                 f"{r0['seed']}, torch {r0['versions']['torch']}, {r0['time_utc'][:10]}.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    for ax, key in zip(axes, ("accuracy", "fd", "recall")):
        for name in sorted({family(r) for r in rows}):
            sel = sorted((r for r in rows if family(r) == name), key=lambda r: r["nfe"])
            err = [binomial_sd(r[key], r["n"]) for r in sel] if key == "accuracy" else None
            ax.errorbar([r["nfe"] for r in sel], [r[key] for r in sel], yerr=err, marker="o", capsize=2,
                        label=name)
        ax.axhline(rows[0][f"{key}_floor"], color="k", ls="--", lw=1, label="data floor")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("total NFE per sample (every candidate)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3, which="both")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def seeds(path: Path) -> str:
    s = json.loads(path.read_text())
    held, other = s.get("heldout") or {}, s.get("other_model") or {}
    return (f"Golden seeds ({s['bank']} seeds, verifier {s['verifier']}, calibration labels {s['calibration_labels']}):"
            f" split-half reliability {s['split_half']:.3f}; held-out labels {held.get('labels')}: Spearman "
            f"{held.get('spearman', float('nan')):.3f} (permutation floor, 95th percentile of |rho|: "
            f"{held.get('floor', float('nan')):.3f}); the student ({other.get('model')}): Spearman "
            f"{other.get('spearman', float('nan')):.3f} (floor {other.get('floor', float('nan')):.3f}). "
            f"Best seeds: {s['order'][:8]}.")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rows = [json.loads(ln) for ln in (out / "search.jsonl").read_text().splitlines() if ln.strip()]
    print(table(rows))
    plot(rows, out / "search.png")
    if (out / "seeds" / "seeds.json").exists():
        print("\n" + seeds(out / "seeds" / "seeds.json"))
    print(f"\nplot: {out / 'search.png'}")
