"""`fewstep bench`: every row of a suite on one ruler, resumable; results, Pareto plots, sample grids, report.html."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping

from fewstep.bench.evaluate import evaluate_model, quality_key, write_csv
from fewstep.bench.provenance import stamp
from fewstep.core.files import append_json_lines, read_json_lines
from fewstep.bench.report import PLOTS, interval_text, label, plot_pareto, render_report
from fewstep.bench.suite import BenchRow, Suite, suite_rows
from fewstep.data import load_dataset
from fewstep.data.prompts import prompt_sets
from fewstep.data.visualize import save_samples
from fewstep.metrics.uncertainty import pool_seeds
from fewstep.models.io import load_model, model_hash
from fewstep.plan import build_plan
from fewstep.runlock import locked
from fewstep.sample import sample_model
from fewstep.train.teacher import GRID_N, SCATTER_N

RESULTS = "results.jsonl"
KEY_FIELDS = ("model_hash", "sampler", "schedule", "steps", "cache", "guidance", "cfg_scale", "cfg_interval", "n",
              "seed", "timing_batch", "prompts")


def settings_key(row: Mapping[str, object]) -> str:
    """What makes two rows one measurement: model, sampler, schedule, steps, cache, guidance, CFG, n, seed, timing."""
    return json.dumps([row.get(k) for k in KEY_FIELDS])


def seed_key(row: Mapping[str, object]) -> str:
    """settings_key without the seed: the rows of one setting measured at several seeds share it."""
    return json.dumps([row.get(k) for k in KEY_FIELDS if k != "seed"])


def pooled_over_seeds(rows: list[dict], results: Iterable[Mapping]) -> list[dict]:
    """Each row pooled (fewstep.metrics.uncertainty.pool_seeds) with its setting's rows at other seeds in `results`,
    over the seeds at which every row was measured (so pooled rows stay paired); the rows themselves at one seed."""
    seeds_of: dict[str, dict[int, Mapping]] = {}
    for r in results:
        seeds_of.setdefault(seed_key(r), {})[r["seed"]] = r
    common = sorted(set.intersection(*({r["seed"], *seeds_of.get(seed_key(r), {})} for r in rows)))
    if len(common) < 2:
        return rows
    return [pool_seeds([r, *(seeds_of[seed_key(r)][s] for s in common if s != r["seed"])]) for r in rows]


def read_results(path: str | Path) -> list[dict[str, object]]:
    """The rows of a JSON-lines results file (none if it does not exist)."""
    path = Path(path)
    return read_json_lines(path, "a results file")


def row_id(planned: BenchRow, key: str) -> str:
    """A file-name-safe id: the family, the steps and 8 hex digits of the settings key."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{planned.family} {planned.settings.steps}step".lower()).strip("-")
    return f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def plan(suite: Suite) -> dict[str, BenchRow]:
    """The suite's rows by settings key; a setting planned twice (e.g. converged = heun at 35 NFE) is measured once."""
    hash_of, model_of = functools.cache(model_hash), functools.cache(load_model)
    planned: dict[str, BenchRow] = {}
    for p in suite_rows(suite):  # keyed by the resolved plan, as evaluate_model records it (a recorded CFG scale)
        resolved = asdict(build_plan(model_of(p.model), p.settings).settings())
        planned.setdefault(settings_key({"model_hash": hash_of(p.model), **asdict(p.settings), **resolved}), p)
    return planned


def _progress_line(row: dict, done: int, total: int, bar) -> str:
    q = quality_key(row)
    elapsed = bar.format_dict["elapsed"]
    eta = bar.format_interval(elapsed / done * (total - done))
    return (f"[{done}/{total}] {label(row)}: {q} {row[q]:.4g} {interval_text(row, q)} (floor {row[q + '_floor']:.3g}), "
            f"{row['seconds_per_sample'] * 1e3:.3g} ms/sample; ETA {eta}")


def _measure(planned: dict[str, BenchRow], results: Path) -> dict[str, dict]:
    """Rows already in `results`, plus every missing row, each evaluated and appended as soon as it is measured."""
    from tqdm.auto import tqdm

    done = {settings_key(r): r for r in read_results(results)}
    todo = [k for k in planned if k not in done]
    if len(todo) < len(planned):
        print(f"bench: {len(planned) - len(todo)} of {len(planned)} rows already in {results}", file=sys.stderr)
    with tqdm(total=len(todo), desc="bench", unit="row", dynamic_ncols=True, file=sys.stderr, disable=not todo,
              mininterval=1.0 if sys.stderr.isatty() else 60.0) as bar:
        for i, key in enumerate(todo, 1):
            p = planned[key]
            row = {**evaluate_model(p.model, p.settings), "row_id": row_id(p, key), "family": p.family, "role": p.role}
            append_json_lines(results, [row])
            done[key] = row
            bar.update()
            bar.write(_progress_line(row, i, len(todo), bar), file=sys.stderr)
    return done


def write_grid(planned: BenchRow, row: dict, path: Path) -> Path:
    """The first 64 samples of a row (its seed, labels cycling) as a PNG grid; for 2-D data, 2000 as a scatter plot."""
    if path.exists():
        return path
    s = planned.settings
    if row.get("image_shape"):  # a text-to-image row: its first prompt set's first prompts, decoded
        model = load_model(planned.model, s.device)
        prompts = prompt_sets(row["prompt_set"], GRID_N)[0].prompts
        result = sample_model(model, GRID_N, s.plan_settings(), s.seed, batch_size=s.batch_size, device=s.device,
                              prompts=prompts, negative_prompt=s.negative_prompt)
        return save_samples(model.decode(result.samples, s.batch_size), path)
    image = quality_key(row) == "fd"
    result = sample_model(planned.model, GRID_N if image else SCATTER_N, s.plan_settings(), s.seed,
                          batch_size=s.batch_size, device=s.device, cycle_classes=True)
    reference = None if image else load_dataset(row.get("dataset_spec") or row["dataset"]).test
    return save_samples(result.samples, path, reference, title=label(row))


@locked("out")
def run_bench(suite: Suite, out: str | Path) -> Path:
    """Measure every row of `suite` (rows already in out/results.jsonl are kept, not re-run) and write the report.

    Where out/results.jsonl holds every row of the suite at other seeds too (`--seed` runs into one folder), each
    row is pooled over those seeds (pooled_over_seeds): the mean, with a two-stage bootstrap interval.

    Writes out/results.jsonl (grows), results.json and results.csv (this suite's rows), pareto-<cost>.png for NFE,
    FLOPs and seconds per sample, grids/<row-id>.png, and report.html, whose path is returned.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planned = plan(suite)
    done = _measure(planned, out / RESULTS)
    rows = [{**done[k], "row_id": row_id(p, k), "family": p.family, "role": p.role} for k, p in planned.items()]
    rows = pooled_over_seeds(rows, done.values())
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    write_csv(rows, out / "results.csv")
    plots = {x: plot_pareto(rows, x, out / f"pareto-{x}.png").read_bytes() for x in PLOTS}
    grids = {r["row_id"]: write_grid(p, r, out / "grids" / f"{r['row_id']}.png").read_bytes()
             for r, p in zip(rows, planned.values())}
    provenance = stamp()
    html = render_report(rows, plots, grids, provenance["command"], provenance["time_utc"])
    (out / "report.html").write_text(html)
    return out / "report.html"
