"""Rendering bench rows: Pareto plots, the headline, a terminal table and a self-contained report.html."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from fewstep.bench.evaluate import quality_key
from fewstep.core.schedules import is_schedule_file
from fewstep.metrics.uncertainty import LEVEL, difference, ratio, ties, unresolved_share

PLOTS = {"nfe": "NFE", "flops_per_sample": "FLOPs per sample", "seconds_per_sample": "seconds per sample"}
MARKERS = {"converged": "*", "sampler": "o", "accelerator": "s", "student": "^"}
# shown beside the headline metric when present
EXTRA_QUALITY = ("precision", "recall", "accuracy", "prompt_accuracy", "heldout_prompt_accuracy", "clip_score", "mmd",
                 "logp", "modes_covered", "worst_mode_ratio", "off_mode")
# the report's note on rows pooled over several seeds (fewstep.metrics.uncertainty.pool_seeds)
POOLED = ("; each row is the mean over its seeds, with a two-stage bootstrap interval: seeds resampled, then each "
          "drawn seed's samples, so it holds seed-to-seed and sample-to-sample variation (FD and MMD: the seeds' "
          "spread plus the reference's jackknife)")


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


def speedup_range(row: dict, reference: dict) -> str:
    """The speed-up's range over the timing repeats (slowest reference / fastest row ...), as " (repeats: a–b×)"."""
    ref_t, row_t = reference.get("timing_repeats_seconds"), row.get("timing_repeats_seconds")
    if not ref_t or not row_t:
        return ""
    return f" (over the timing repeats: {min(ref_t) / max(row_t):.3g}–{max(ref_t) / min(row_t):.3g}×)"


def pareto_front(rows: list[dict], x: str) -> list[dict]:
    """Rows no other row beats on both x (cost) and quality (lower is better for both), by increasing x."""
    q = quality_key(rows[0])
    front: list[dict] = []
    for r in sorted(rows, key=lambda r: (r[x], r[q])):
        if not front or r[q] < front[-1][q]:
            front.append(r)
    return front


def _log_ticks(axis, base: int) -> None:
    """Labelled ticks at 1, 2, 5 x powers of ten (powers of two for NFE), so even a span under a decade is readable."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=base, subs=(1.0,) if base == 2 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_pareto(rows: list[dict], x: str, path: str | Path) -> Path:
    """Quality vs one cost (log-log), one line/marker per family with interval error bars, the data floor dashed,
    the Pareto front shaded beneath every marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = quality_key(rows[0])
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    colors = plt.get_cmap("tab20").colors
    front = pareto_front(rows, x)
    ax.step([r[x] for r in front], [r[q] for r in front], where="post", color="gold", lw=8, alpha=0.45, zorder=1,
            label="Pareto front")
    for i, family in enumerate(dict.fromkeys(r["family"] for r in rows)):
        sel = sorted((r for r in rows if r["family"] == family), key=lambda r: r[x])
        role = sel[0]["role"]
        zorder = {"converged": 6, "student": 5}.get(role, 3)  # students above the front and the grid
        ax.plot([r[x] for r in sel], [r[q] for r in sel], marker=MARKERS[role], color=colors[i % 20],
                ms=12 if role == "converged" else 8 if role == "student" else 6, lw=1, label=family, zorder=zorder)
        bars = [r for r in sel if f"{q}_lo" in r]  # drawn lo to hi: a basic interval need not hold the estimate
        ax.vlines([r[x] for r in bars], [r[f"{q}_lo"] for r in bars], [r[f"{q}_hi"] for r in bars],
                  color=colors[i % 20], lw=1, zorder=zorder)
    ax.axhline(rows[0][f"{q}_floor"], color="k", ls="--", lw=1, label="data floor (real vs real)", zorder=2)
    ax.set_xscale("log", base=2 if x == "nfe" else 10)
    ax.set_yscale("log")
    _log_ticks(ax.xaxis, 2 if x == "nfe" else 10)
    _log_ticks(ax.yaxis, 10)
    ax.set_xlabel(PLOTS[x])
    ax.set_ylabel(q.upper())
    ax.grid(alpha=0.3, which="both")
    # below the axes, in columns: the figure keeps the plot's width, so the legend stays legible when the page
    # scales the image down
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _span(lo: float, hi: float) -> str:
    return f"[{lo:.3g}, {hi:.3g}]"


def comparison(row: dict, ref: dict, q: str) -> str:
    """How `row` compares with `ref` on metric q: the ratio with its interval and whether the difference is resolved."""
    d, r = difference(row, ref, q), ratio(row, ref, q)
    if d is None or r is None:
        return f"{row[q] / ref[q]:.3g}× the teacher's {q.upper()} (no interval: no replicates drawn alike)"
    verdict = ("not resolved from it" if d[1] <= 0 <= d[2] else "resolved: better" if d[0] < 0 else "resolved: worse")
    return (f"{r[0]:.3g}× the teacher's {q.upper()} ({LEVEL:.0%} interval of the ratio {_span(*r[1:])}; "
            f"the difference {d[0]:+.3g}, interval {_span(*d[1:])}, is {verdict})")


def headline(rows: list[dict]) -> str:
    """The fastest student or accelerated setting whose quality is not resolved worse than the teacher's converged
    setting (else the closest), with the ratio of their quality and its interval."""
    ref = converged_row(rows)
    q, name = quality_key(ref), quality_key(ref).upper()
    others = [r for r in rows if r["role"] in ("student", "accelerator")]
    noun = "student or accelerated setting" if others else "training-free sampler setting"
    others = others or [r for r in rows if r is not ref]
    if not others:
        return f"Only the teacher's converged setting was measured: {label(ref)}, {name} {ref[q]:.3g}."
    reaching = [r for r in others if r[q] <= ref[q] or ties(r, ref).get(q)]
    r = min(reaching, key=lambda r: r["seconds_per_sample"]) if reaching else min(others, key=lambda r: r[q])
    if not reaching:
        verdict = f"No {noun} reaches the teacher's converged quality; the closest is"
    else:
        verdict = f"The fastest {noun} not resolved worse than the teacher's converged quality is"
    return (f"{verdict} {label(r)}: {name} {r[q]:.3g} vs {ref[q]:.3g} for the teacher's converged setting "
            f"({setting(ref)}) at n = {ref['n']}: {comparison(r, ref, q)}; the data floor (real vs real) is "
            f"{ref[f'{q}_floor']:.3g}. Speed-up {speedup(r, ref):.3g}× in seconds per sample "
            f"({r['seconds_per_sample'] * 1e3:.3g} vs {ref['seconds_per_sample'] * 1e3:.3g} ms)"
            f"{speedup_range(r, ref)}.")


def resolution_warning(rows: list[dict]) -> str | None:
    """A warning when n is too small for the headline metric to separate the rows from the converged setting."""
    ref = converged_row(rows)
    q = quality_key(ref)
    unresolved, known = unresolved_share(rows, ref, q)
    if known and unresolved * 2 > known:
        return (f"n = {ref['n']} is too small for {q.upper()} to separate these rows: {unresolved} of {known} are not "
                f"resolved from the teacher's converged setting (their difference's {LEVEL:.0%} interval "
                "contains 0). Rerun with a larger --n.")
    return None


def floor_note(ref: dict) -> str:
    """Why the floor's n differs from the ruler's n, when it does."""
    floor_n = ref.get("floor_n", ref["n"])
    if floor_n == ref["n"]:
        return ""
    return (f" (not {ref['n']}: the real pool holds {floor_n + ref.get('n_ref', 0)} items, {ref.get('n_ref')} of them "
            "are the reference, the rest stand in for samples)")


def _quality_columns(rows: list[dict]) -> list[str]:
    q = quality_key(rows[0])
    return [q, *(k for k in EXTRA_QUALITY if k in rows[0])]


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def interval_text(row: dict, k: str) -> str:
    """A metric's interval as "[lo, hi]", or "" when the row has none."""
    return _span(row[f"{k}_lo"], row[f"{k}_hi"]) if f"{k}_lo" in row else ""


def seeds_text(row: dict) -> str:
    """The row's noise seed, or the seeds it is pooled over."""
    seeds = row.get("seeds")
    return f"seeds {', '.join(map(str, seeds))} (pooled)" if seeds else f"seed {row['seed']}"


def _cells(row: dict, ref: dict, quality: list[str]) -> list[tuple[str, object, str]]:
    """(header, value, its interval and tie badge as HTML) for every column of the results table."""
    tied = ties(row, ref) if row is not ref else {}

    def note(k: str) -> str:
        ci = interval_text(row, k)
        tie = (f" <span class='tie' title='the difference from the converged setting has a {LEVEL:.0%} "
               "interval that contains 0: not resolved at this n'>tie</span>" if tied.get(k) else "")
        return (f" <span class='ci'>{escape(ci)}</span>" if ci else "") + tie

    return [("family", row["family"], ""), ("model", "/".join(Path(row["model"]).parts[-2:]), ""),
            ("sampler", row["sampler"], ""), ("schedule", schedule_name(row), ""), ("steps", row["steps"], ""),
            ("NFE", row["nfe"], ""), ("cache / guidance", ", ".join(accelerations(row)), ""),
            *((k if k != quality[0] else k.upper(), row.get(k), note(k)) for k in quality),
            ("agreement RMSE", row.get("agreement_rmse"), note("agreement_rmse")),
            ("GFLOPs / sample", row["flops_per_sample"] / 1e9, ""),
            ("ms / sample", row["seconds_per_sample"] * 1e3, ""), ("speed-up", speedup(row, ref), "")]


def _metric_text(row: dict, k: str, tied: bool) -> str:
    return f"{_fmt(row.get(k))} {interval_text(row, k)}{' tie' if tied else ''}".strip()


def _other_metrics(rows: list[dict], ref: dict) -> list[str]:
    """The terminal's second table: every other quality column with its interval and tie mark, per row."""
    keys = [k for k in (*_quality_columns(rows)[1:], "agreement_rmse") if any(k in r for r in rows)]
    if not keys:
        return []
    tied = [ties(r, ref) if r is not ref else {} for r in rows]
    cells = [[_metric_text(r, k, t.get(k, False)) for k in keys] for r, t in zip(rows, tied)]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [f"\n{'other quality (95% interval, tie: not resolved)':<66} " + "  ".join(
        f"{k:<{w}}" for k, w in zip(keys, widths))]
    for r, c in zip(rows, cells):
        lines.append(f"{r['family'][:28]:<28} {r['sampler'] + ' (' + schedule_name(r) + ')':<32} {r['nfe']:>4} "
                     + "  ".join(f"{v:<{w}}" for v, w in zip(c, widths)).rstrip())
    return lines


def summary_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal: family, setting, NFE, quality with its interval (ties marked), ms per
    sample, speed-up; the data floor; the other quality metrics with theirs; the seeds; a warning when n cannot
    separate the rows."""
    ref, q = converged_row(rows), quality_key(rows[0])
    lines = [f"{'family':<28} {'sampler (schedule)':<32} {'NFE':>4} {q.upper():>8} {'95% interval':<18}     "
             f"{'ms/sample':>10} {'speed-up':>9}"]
    for r in rows:
        tie = " tie" if r is not ref and ties(r, ref).get(q) else ""
        lines.append(f"{r['family'][:28]:<28} {r['sampler'] + ' (' + schedule_name(r) + ')':<32} {r['nfe']:>4} "
                     f"{r[q]:>8.4g} {interval_text(r, q):<18}{tie:<4} {r['seconds_per_sample'] * 1e3:>10.4g} "
                     f"{speedup(r, ref):>8.3g}x")
    lines.append(f"{'data floor (real vs real, n = ' + str(ref.get('floor_n', ref['n'])) + ')':<66} "
                 f"{ref[q + '_floor']:>8.4g}")
    lines += _other_metrics(rows, ref)
    lines.append(f"n = {ref['n']}, {seeds_text(ref)}")
    warning = resolution_warning(rows)
    return "\n".join(lines + ([f"warning: {warning}"] if warning else []))


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
        for _, value, note in _cells(row, ref, quality):
            sort = f" data-v='{value!r}'" if isinstance(value, (int, float)) else ""
            out.append(f"<td{sort}>{escape(_fmt(value))}{note}</td>")
        out.append("</tr>")
    floor = [f"<td>{escape(_fmt(ref.get(k + '_floor')))}</td>" for k in quality]
    out += ["</tbody><tfoot><tr class='floor'>",
            f"<td colspan='8'>data floor (real vs real, n = {ref.get('floor_n', ref['n'])}"
            f"{escape(floor_note(ref))})</td>", *floor,
            f"<td colspan='{len(heads) - 8 - len(quality)}'></td></tr></tfoot></table>"]
    return "\n".join(out)


def _gallery(rows: list[dict], grids: dict[str, bytes]) -> str:
    ref, q = converged_row(rows), quality_key(rows[0])

    def figure(row: dict) -> str:
        caption = escape(f"{label(row)}, {q.upper()} {row[q]:.3g} {interval_text(row, q)}".rstrip())
        image = f"<img src='{_data_uri(grids[row['row_id']])}' alt='{caption}'>"
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"

    pinned = f"<aside class='pinned'>{figure(ref)}</aside>" if ref["row_id"] in grids else ""
    others = "\n".join(figure(r) for r in rows if r is not ref and r["row_id"] in grids)
    return f"<div class='samples'>{pinned}<div class='gallery'>{others}</div></div>"


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;color:#222}
h1{font-size:1.6em}code{background:#f3f3f3;padding:.1em .3em}.headline{font-size:1.15em;background:#f6f8ff;
border-left:4px solid #4064d0;padding:.6em 1em}table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}td:nth-child(-n+8){text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0}th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"}tr.converged{font-weight:600;background:#fffbe6}tr.floor{font-style:italic;
background:#f7f7f7}.tie{background:#dff3df;color:#185c18;border-radius:3px;padding:0 3px;font-size:11px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1em}.plots img{width:100%;max-width:720px}
.samples{display:flex;gap:2em;align-items:flex-start}.pinned{position:sticky;top:.5em;flex:0 0 300px;background:#fffbe6;
padding:.5em;border:1px solid #e8dca0}
.gallery{flex:1;display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1.5em 2em}figure{margin:0}figure img{width:100%;max-width:300px}figcaption{font-size:12px;color:#444}
.ci{color:#666;font-size:11px}.warning{background:#fff1f0;border-left:4px solid #d04040;padding:.6em 1em}
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
    resolution = resolution_warning(rows)
    warning = f"<p class='warning'><b>Warning:</b> {escape(resolution)}</p>" if resolution else ""
    meta = [("command", f"<code>{escape(command)}</code>"), ("machine", escape(machine)),
            ("versions", escape(", ".join(f"{k} {v}" for k, v in ref["versions"].items()))),
            ("date", escape(f"{date} (rows measured {times[0]} to {times[-1]})")),
            ("ruler", escape(f"n = {ref['n']} samples, {seeds_text(ref)}, timing batch {ref['timing_batch']}, "
                             f"dataset {ref['dataset']}"))]
    plot_html = "".join(f"<img src='{_data_uri(plots[k])}' alt='{escape(quality_key(ref))} vs {escape(t)}'>"
                        for k, t in PLOTS.items() if k in plots)
    teacher = Path(ref["model"])
    jackknife = (f"FD and MMD: a grouped jackknife, each of {ref['jackknife_groups']} groups of the samples and of "
                 "the reference deleted in turn; the others: " if "jackknife_groups" in ref else "")
    title = f"fewstep bench: {teacher.parent.name if teacher.name == 'model' else teacher.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<table class="meta">{"".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in meta)}</table>
{warn}<p class="headline">{escape(headline(rows))}</p>
{warning}
<h2>Results</h2>
<p>Click a column header to sort. Brackets: the {LEVEL:.0%} interval of a quality number ({jackknife}bootstrap:
{ref.get('bootstrap_resamples', 'no')} resamples of the samples and the reference,
seed {ref.get('bootstrap_seed', '-')}){escape(POOLED) if ref.get('seeds') else ''}.
<span class="tie">tie</span>: the {LEVEL:.0%} interval of the difference from the teacher's converged setting
(highlighted; paired: same seeds, same reference) contains 0, so this n cannot tell them apart. The data floor (real vs
real) is context: what real data scores on the same ruler. Speed-up is the converged setting's seconds per sample
divided by the row's, timed in the same run.</p>
{_table(rows)}
<h2>Quality vs cost</h2>
<p>Lower is better on both axes; the shaded line is the Pareto front, the dashed line the data floor.</p>
<div class="plots">{plot_html}</div>
<h2>Samples from the same noise</h2>
<p>Each row's samples from the same seed and sample indices as the teacher's converged samples (pinned on the left),
labels cycling over the classes.</p>
{_gallery(rows, grids)}
<script>{SORT_JS}</script>
</body></html>
"""
