"""Rendering bench rows: Pareto plots, the headline, a terminal table and a self-contained report.html."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from fewstep.bench.evaluate import quality_key
from fewstep.metrics.floor import IDEAL, ties
from fewstep.core.schedules import is_schedule_file

PLOTS = {"nfe": "NFE", "flops_per_sample": "FLOPs per sample", "seconds_per_sample": "seconds per sample"}
MARKERS = {"converged": "*", "sampler": "o", "accelerator": "s", "student": "^"}
# shown beside the headline metric when present
EXTRA_QUALITY = ("precision", "recall", "accuracy", "prompt_accuracy", "heldout_prompt_accuracy", "mmd", "logp")


def converged_row(rows: list[dict]) -> dict:
    """The teacher's converged setting, the row every other row is compared with."""
    return next(r for r in rows if r["role"] == "converged")


def schedule_name(row: dict) -> str:
    """The schedule's name, or a searched schedule's file name."""
    return Path(row["schedule"]).name if is_schedule_file(row["schedule"]) else row["schedule"]


def accelerations(row: dict) -> list[str]:
    """A row's cache and guidance specs, CFG scale (other than 1) and CFG interval."""
    cfg = [f"cfg {row['cfg_scale']:g}"] if row.get("cfg_scale", 1.0) != 1.0 else []
    lo_hi = row.get("cfg_interval")
    interval = [f"cfg interval {lo_hi[0]:g}-{lo_hi[1]:g}"] if lo_hi else []
    return [*(row[k] for k in ("cache", "guidance") if row.get(k)), *cfg, *interval]


def setting(row: dict) -> str:
    """Sampler (schedule), NFE and the accelerations of a row."""
    return ", ".join([f"{row['sampler']} ({schedule_name(row)})", f"NFE {row['nfe']}", *accelerations(row)])


def label(row: dict) -> str:
    """A row in one line: its family (unless that is its sampler and schedule) and its setting."""
    return setting(row) if row["role"] == "sampler" else f"{row['family']}: {setting(row)}"


def speedup(row: dict, reference: dict) -> float:
    """How many times less time per sample `row` takes than `reference` (same run, same timing batch)."""
    return reference["seconds_per_sample"] / row["seconds_per_sample"]


def pareto_front(rows: list[dict], x: str) -> list[dict]:
    """Rows no other row beats on both x (cost) and quality (lower is better for both), by increasing x."""
    q = quality_key(rows[0])
    front: list[dict] = []
    for r in sorted(rows, key=lambda r: (r[x], r[q])):
        if not front or r[q] < front[-1][q]:
            front.append(r)
    return front


def plot_pareto(rows: list[dict], x: str, path: str | Path) -> Path:
    """Quality vs one cost (log-log), one line/marker per family, the data floor dashed, the Pareto front shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    q = quality_key(rows[0])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = plt.get_cmap("tab20").colors
    for i, family in enumerate(dict.fromkeys(r["family"] for r in rows)):
        sel = sorted((r for r in rows if r["family"] == family), key=lambda r: r[x])
        ax.plot([r[x] for r in sel], [r[q] for r in sel], marker=MARKERS[sel[0]["role"]], color=colors[i % 20],
                ms=12 if sel[0]["role"] == "converged" else 6, lw=1, label=family)
    front = pareto_front(rows, x)
    ax.step([r[x] for r in front], [r[q] for r in front], where="post", color="gold", lw=8, alpha=0.45, zorder=0,
            label="Pareto front")
    ax.axhline(rows[0][f"{q}_floor"], color="k", ls="--", lw=1, label="data floor (real vs real)")
    ax.set_xscale("log", base=2 if x == "nfe" else 10)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide when the costs span less than a decade
    ax.set_yscale("log")
    ax.set_xlabel(PLOTS[x])
    ax.set_ylabel(q.upper())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def headline(rows: list[dict]) -> str:
    """The fastest student or accelerated setting that reaches the teacher's converged quality (else the closest)."""
    ref = converged_row(rows)
    q, name = quality_key(ref), quality_key(ref).upper()
    others = [r for r in rows if r["role"] in ("student", "accelerator")]
    noun = "student or accelerated setting" if others else "training-free sampler setting"
    others = others or [r for r in rows if r is not ref]
    if not others:
        return f"Only the teacher's converged setting was measured: {label(ref)}, {name} {ref[q]:.3g}."
    reaching = [r for r in others if r[q] <= ref[q] or ties(r, ref).get(q)]
    r = min(reaching, key=lambda r: r["seconds_per_sample"]) if reaching else min(others, key=lambda r: r[q])
    floor = max(ref[f"{q}_floor"], r[f"{q}_floor"], key=lambda f: abs(f - IDEAL[q]))
    if not reaching:
        verdict = f"No {noun} reaches the teacher's converged quality; the closest is"
    else:
        verdict = f"The fastest {noun} at the teacher's converged quality is"
    how = "a tie within" if ties(r, ref).get(q) else "better by more than" if r[q] < ref[q] else "worse by more than"
    return (f"{verdict} {label(r)}: {name} {r[q]:.3g} vs {ref[q]:.3g} for the teacher's converged setting "
            f"({setting(ref)}), {how} the data floor ({floor:.3g}), with a speed-up of "
            f"{speedup(r, ref):.3g}× in seconds per sample ({r['seconds_per_sample'] * 1e3:.3g} vs "
            f"{ref['seconds_per_sample'] * 1e3:.3g} ms).")


def _quality_columns(rows: list[dict]) -> list[str]:
    q = quality_key(rows[0])
    return [q, *(k for k in EXTRA_QUALITY if k in rows[0])]


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _cells(row: dict, ref: dict, quality: list[str]) -> list[tuple[str, object, bool]]:
    """(header, value, tie with the converged setting) for every column of the results table."""
    tied = ties(row, ref) if row is not ref else {}
    return [("family", row["family"], False), ("model", "/".join(Path(row["model"]).parts[-2:]), False),
            ("sampler", row["sampler"], False), ("schedule", schedule_name(row), False), ("steps", row["steps"], False),
            ("NFE", row["nfe"], False), ("cache / guidance", ", ".join(accelerations(row)), False),
            *((k if k != quality[0] else k.upper(), row.get(k), tied.get(k, False)) for k in quality),
            ("agreement RMSE", row.get("agreement_rmse"), False),
            ("GFLOPs / sample", row["flops_per_sample"] / 1e9, False),
            ("ms / sample", row["seconds_per_sample"] * 1e3, False), ("speed-up", speedup(row, ref), False)]


def summary_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal: family, setting, NFE, quality (tie marked), ms per sample, speed-up."""
    ref, q = converged_row(rows), quality_key(rows[0])
    lines = [f"{'family':<28} {'sampler (schedule)':<32} {'NFE':>4} {q.upper():>12} {'ms/sample':>10} {'speed-up':>9}"]
    for r in rows:
        tie = " tie" if r is not ref and ties(r, ref).get(q) else ""
        lines.append(f"{r['family'][:28]:<28} {r['sampler'] + ' (' + schedule_name(r) + ')':<32} {r['nfe']:>4} "
                     f"{r[q]:>8.4g}{tie:<4} {r['seconds_per_sample'] * 1e3:>10.4g} {speedup(r, ref):>8.3g}x")
    lines.append(f"{'data floor (real vs real)':<66} {rows[0][q + '_floor']:>8.4g}")
    return "\n".join(lines)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _table(rows: list[dict]) -> str:
    ref, quality = converged_row(rows), _quality_columns(rows)
    heads = ["#", *(h for h, _, _ in _cells(ref, ref, quality))]
    out = ["<table id='results' class='sortable'><thead><tr>",
           *(f"<th title='click to sort'>{escape(h)}</th>" for h in heads), "</tr></thead><tbody>"]
    for i, row in enumerate(rows, 1):
        cls = " class='converged'" if row is ref else ""
        out.append(f"<tr id='row-{escape(row['row_id'])}'{cls}><td data-v='{i}'>{i}</td>")
        for _, value, tie in _cells(row, ref, quality):
            sort = f" data-v='{value!r}'" if isinstance(value, (int, float)) else ""
            mark = " <span class='tie' title='within the data floor of the converged setting'>tie</span>" if tie else ""
            out.append(f"<td{sort}>{escape(_fmt(value))}{mark}</td>")
        out.append("</tr>")
    floor = [f"<td>{escape(_fmt(ref.get(k + '_floor')))}</td>" for k in quality]
    out += ["</tbody><tfoot><tr class='floor'>",
            f"<td colspan='8'>data floor (real vs real, n = {ref.get('floor_n', ref['n'])})</td>", *floor,
            f"<td colspan='{len(heads) - 8 - len(quality)}'></td></tr></tfoot></table>"]
    return "\n".join(out)


def _gallery(rows: list[dict], grids: dict[str, bytes]) -> str:
    ref, q = converged_row(rows), quality_key(rows[0])

    def figure(row: dict) -> str:
        caption = escape(f"{label(row)}, {q.upper()} {row[q]:.3g}")
        image = f"<img src='{_data_uri(grids[row['row_id']])}' alt='{caption}'>"
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"

    pairs = [f"<div class='pair'>{figure(r)}{figure(ref)}</div>" for r in rows
             if r is not ref and r["row_id"] in grids and ref["row_id"] in grids]
    return "<div class='gallery'>" + "\n".join(pairs) + "</div>"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;color:#222}
h1{font-size:1.6em}code{background:#f3f3f3;padding:.1em .3em}.headline{font-size:1.15em;background:#f6f8ff;
border-left:4px solid #4064d0;padding:.6em 1em}table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}td:nth-child(-n+8){text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0}th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"}tr.converged{font-weight:600;background:#fffbe6}tr.floor{font-style:italic;
background:#f7f7f7}.tie{background:#dff3df;color:#185c18;border-radius:3px;padding:0 3px;font-size:11px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:1em}.plots img{max-width:100%}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:1.5em 2em}
.pair{display:flex;gap:1em}.pair figure{margin:0;flex:1}.pair img{width:100%;max-width:300px}
figcaption{font-size:12px;color:#444}
.meta td{text-align:left;border:none;padding:1px 8px 1px 0}"""

SORT_JS = """document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0];
  const dir = th.dataset.dir === "asc" ? "desc" : "asc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = tr => tr.cells[col].dataset.v !== undefined ? parseFloat(tr.cells[col].dataset.v)
    : tr.cells[col].textContent;
  const cmp = (a, b) => typeof a === "number" && typeof b === "number" ? a - b
    : String(a).localeCompare(String(b), undefined, {numeric: true});
  [...body.rows].sort((a, b) => (dir === "asc" ? 1 : -1) * cmp(key(a), key(b))).forEach(tr => body.appendChild(tr));
}));"""


def render_report(rows: list[dict], plots: dict[str, bytes], grids: dict[str, bytes], command: str, date: str) -> str:
    """report.html as one string: provenance, headline, sortable table with ties and floor, plots, grid gallery.

    `rows` are result rows with `row_id`, `family` and `role` (one `converged`); `plots` maps a PLOTS key and `grids`
    a row_id to PNG bytes, embedded as data URIs, so the file needs no network and no other file.
    """
    ref = converged_row(rows)
    machines = {json.dumps(r["machine"], sort_keys=True) for r in rows}
    machine = ", ".join(f"{k} {v}" for k, v in ref["machine"].items())
    warn = (f"<p><b>Note:</b> these rows were measured on {len(machines)} different machines; compare their timings "
            "with care.</p>" if len(machines) > 1 else "")
    times = sorted(r["time_utc"] for r in rows)
    meta = [("command", f"<code>{escape(command)}</code>"), ("machine", escape(machine)),
            ("versions", escape(", ".join(f"{k} {v}" for k, v in ref["versions"].items()))),
            ("date", escape(f"{date} (rows measured {times[0]} to {times[-1]})")),
            ("ruler", escape(f"n = {ref['n']} samples, seed {ref['seed']}, timing batch {ref['timing_batch']}, "
                             f"dataset {ref['dataset']}"))]
    plot_html = "".join(f"<img src='{_data_uri(plots[k])}' alt='{escape(quality_key(ref))} vs {escape(t)}'>"
                        for k, t in PLOTS.items() if k in plots)
    teacher = Path(ref["model"])
    title = f"fewstep bench: {teacher.parent.name if teacher.name == 'model' else teacher.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<table class="meta">{"".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in meta)}</table>
{warn}<p class="headline">{escape(headline(rows))}</p>
<h2>Results</h2>
<p>Click a column header to sort. <span class="tie">tie</span>: the difference from the teacher's converged setting
(highlighted) is smaller than the data floor's distance from the ideal value, so real data cannot tell them apart.
Speed-up is the converged setting's seconds per sample divided by the row's, timed in the same run.</p>
{_table(rows)}
<h2>Quality vs cost</h2>
<p>Lower is better on both axes; the shaded line is the Pareto front, the dashed line the data floor.</p>
<div class="plots">{plot_html}</div>
<h2>Samples from the same noise</h2>
<p>Each row's samples (left) beside the teacher's converged samples (right): the same seed and sample indices, labels
cycling over the classes.</p>
{_gallery(rows, grids)}
<script>{SORT_JS}</script>
</body></html>
"""
