"""`fewstep bench`: a suite on a tiny teacher and student, resumed without recomputing; report.html checked as text
and, where chromium is installed, in a headless browser.

The full bench runs on a tiny 2-D teacher (its ruler needs no feature network, so it takes seconds); the U-Net
parts (default caches, image grids) run on the tiny digits teacher without measuring.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import subprocess

import pytest
from PIL import Image

from fewstep.core.schedules import write_schedule_file
from fewstep.bench import run as bench_run
from fewstep.bench.report import PLOTS, render_report
from fewstep.bench.suite import resolve_suite, suite_rows
from fewstep.cli import main
from fewstep.distill import distill, resolve_distill_config
from fewstep.train.teacher import resolve_train_config, train_teacher

SUITE = """
teacher = "{teacher}"
n = 64
timing_batch = 8
[samplers]
names = ["euler"]
schedules = ["karras"]
nfe = [1, 2]
[[accelerators]]
schedule = "{schedule}"
"""


@pytest.fixture(scope="module")
def quick_teacher(tmp_path_factory):
    """A tiny unconditional 8-Gaussians teacher (MLP, 20 steps)."""
    out = tmp_path_factory.mktemp("toy")
    train_teacher(resolve_train_config({"dataset": "8gaussians", "preset": "tiny", "device": "cpu"}), out)
    return out


@pytest.fixture(scope="module")
def students(quick_teacher, tmp_path_factory):
    """A folder holding one tiny consistency student of the toy teacher (1 and 2 steps)."""
    out = tmp_path_factory.mktemp("students")
    distill(resolve_distill_config({"teacher": str(quick_teacher), "method": "consistency", "preset": "tiny",
                                    "device": "cpu", "steps": "1,2", "train_steps": 2}), out / "cd")
    return out


@pytest.fixture(scope="module")
def bench(quick_teacher, students, tmp_path_factory):
    """The suite above (with a searched Euler schedule) plus the students folder, run through the CLI."""
    tmp = tmp_path_factory.mktemp("bench")
    write_schedule_file({"sampler": "euler", "sigmas": [80.0, 2.0, 0.3]}, tmp / "searched.json")
    (tmp / "suite.toml").write_text(SUITE.format(teacher=quick_teacher, schedule=tmp / "searched.json"))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--suite", str(tmp / "suite.toml"), "--students", str(students), "--out", str(tmp / "r")])
    assert code == 0
    return tmp, stdout.getvalue()


def test_bench_writes_every_row_plots_grids_and_report(bench):
    tmp, stdout = bench
    out = tmp / "r"
    rows = json.loads((out / "results.json").read_text())
    # converged heun 18 + euler at 1 and 2 NFE + the searched schedule (3 Euler steps) + the student at 1 and 2 steps
    assert [(r["role"], r["sampler"], r["nfe"]) for r in rows] == [
        ("converged", "heun", 35), ("sampler", "euler", 1), ("sampler", "euler", 2), ("accelerator", "euler", 3),
        ("student", "consistency", 1), ("student", "consistency", 2)]
    assert {(r["n"], r["seed"], r["timing_batch"]) for r in rows} == {(64, 0, 8)}
    assert rows[3]["family"] == "searched schedule" and rows[4]["method"] == "consistency"
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    assert len((out / "results.csv").read_text().splitlines()) == 7
    assert all((out / f"pareto-{x}.png").stat().st_size > 0 for x in PLOTS)
    assert sorted(p.stem for p in (out / "grids").glob("*.png")) == sorted(r["row_id"] for r in rows)
    assert f"report: {out / 'report.html'}" in stdout and "data floor" in stdout and "consistency student" in stdout


def test_second_run_recomputes_nothing(bench, students, monkeypatch):
    tmp, _ = bench
    out = tmp / "r"

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was measured again")

    monkeypatch.setattr(bench_run, "evaluate_model", refuse)
    monkeypatch.setattr(bench_run, "sample_model", refuse)
    before = (out / "results.jsonl").read_text()
    (out / "report.html").unlink()
    suite = resolve_suite(str(tmp / "suite.toml"), students=str(students))
    assert bench_run.run_bench(suite, out) == out / "report.html"
    assert (out / "results.jsonl").read_text() == before and (out / "report.html").exists()


def test_a_second_seed_pools_every_row_over_both(bench, students, tmp_path):
    """bench --seed 1 into a folder holding the suite at seed 0: every row is measured at seed 1 and reported as the
    mean over both seeds, with the two-stage interval (fewstep.metrics.pool_seeds)."""
    out = tmp_path / "r"
    shutil.copytree(bench[0] / "r", out)
    seed_0 = {(r["sampler"], r["nfe"], r["family"]): r for r in json.loads((out / "results.json").read_text())}
    bench_run.run_bench(resolve_suite(str(bench[0] / "suite.toml"), students=str(students), seed=1), out)
    rows = json.loads((out / "results.json").read_text())
    assert len((out / "results.jsonl").read_text().splitlines()) == 12 and len(rows) == 6
    for r in rows:
        assert r["seeds"] == [0, 1] and r["seed"] == 1 and r["per_seed"]["sw2"][0] == seed_0[
            (r["sampler"], r["nfe"], r["family"])]["sw2"]
        assert r["sw2"] == pytest.approx(sum(r["per_seed"]["sw2"]) / 2) and r["sw2_lo"] < r["sw2_hi"]
    assert "seeds 0, 1 (pooled)" in (out / "report.html").read_text()


def test_report_holds_table_plots_grids_and_headline(bench):
    out = bench[0] / "r"
    html = (out / "report.html").read_text()
    rows = json.loads((out / "results.json").read_text())
    assert all(f"id='row-{r['row_id']}'" in html for r in rows)
    assert html.count("<tr id='row-") == len(rows) and "data floor (real vs real, n =" in html
    assert len(re.findall(r"<img src='data:image/png;base64,[A-Za-z0-9+/=]{100,}' alt='sw2 vs ", html)) == 3
    teacher = re.search(r"<aside class='pinned'><figure><img src='([^']+)'", html).group(1)
    assert html.count(teacher) == 1 and html.count("<figure>") == len(rows)  # the teacher's grid once, pinned
    assert "class=\"headline\">The fastest student or accelerated setting" in html or "No student or" in html
    assert "http://" not in html and "https://" not in html  # self-contained


def row(role, family, fd, seconds, nfe=4, **kw):
    # unpaired FD replicates of spread 0.15: the rows at FD 1.0-1.3 are not resolved from each other, FD 5 and 9 are
    rng = random.Random(nfe)
    reps = [fd + 0.15 * rng.gauss(0, 1) for _ in range(100)]
    return {"role": role, "family": family, "row_id": f"{family}-{nfe}".replace(" ", "-"), "model": "runs/t/model",
            "sampler": "euler", "schedule": "karras", "steps": nfe, "nfe": nfe, "cache": None, "guidance": None,
            "cfg_scale": 1.0, "fd": fd, "fd_floor": 0.5, "fd_lo": fd - 0.2, "fd_hi": fd + 0.2, "precision": 0.9,
            "precision_floor": 0.92, "bootstrap": {"fd": reps}, "bootstrap_resamples": 100, "bootstrap_seed": 0,
            "agreement_rmse": 0.1, "flops_per_sample": 1e8 * nfe, "seconds_per_sample": seconds, "n": 100, "seed": 0,
            "timing_batch": 64, "dataset": "digits", "time_utc": "2026-01-01T00:00:00Z",
            "machine": {"cpu_count": 2}, "versions": {"torch": "2"}, **kw}


def test_render_report_is_a_pure_function_of_rows():
    rows = [row("converged", "teacher (converged)", 1.0, 0.02, 35), row("sampler", "euler (karras)", 9.0, 0.002),
            row("student", "consistency student", 1.3, 0.001, 1), row("student", "consistency student", 1.2, 0.004, 2)]
    html = render_report(rows, {}, {}, "fewstep bench --teacher runs/t", "2026-01-01")
    headline = re.search(r'class="headline">([^<]*)<', html).group(1)
    # the fastest setting not resolved worse than the converged FD: the 1-step student, 20x faster, with its ratio
    assert "consistency student: euler (karras), NFE 1" in headline and "20\u00d7" in headline
    assert "1.3× the teacher&#x27;s FD" in headline and "not resolved" in headline
    assert html.count("class='tie'") == 2 and "fewstep bench --teacher runs/t" in html
    rows[2]["fd"] = rows[3]["fd"] = 5.0
    rows[2]["bootstrap"] = rows[3]["bootstrap"] = {"fd": [5.0] * 100}
    assert "No student or accelerated setting reaches" in render_report(rows, {}, {}, "", "")


def test_pareto_plot_draws_students_above_the_front_with_labelled_log_ticks(tmp_path, monkeypatch):
    import matplotlib.figure

    from fewstep.bench.report import plot_pareto

    rows = [row("converged", "teacher (converged)", 1.0, 0.02, 35), row("sampler", "euler (karras)", 9.0, 0.002),
            row("student", "consistency student", 1.3, 0.001, 1)]
    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def inspect(fig, path, **kw):
        ax = fig.axes[0]
        seen["ticks"] = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["font"] = ax.get_legend().get_texts()[0].get_fontsize()
        seen["z"] = {line.get_label(): line.get_zorder() for line in ax.get_lines()}
        seen["bars"] = [c.get_segments()[0][:, 1].tolist() for c in ax.collections if c.get_segments()]
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", inspect)
    rows[0].update(fd_lo=0.5, fd_hi=0.9)  # a basic interval below its estimate (FD's resampling bias) is drawn as is
    plot_pareto(rows, "seconds_per_sample", tmp_path / "p.png")
    assert [0.5, 0.9] in seen["bars"]
    assert len(seen["ticks"]) >= 3 and seen["font"] >= 9
    assert {"Pareto front", "consistency student", "teacher (converged)"} <= set(seen["legend"])
    assert seen["z"]["consistency student"] > seen["z"]["Pareto front"]


@pytest.mark.parametrize("text,message", [
    ('teacher = "{teacher}"\nnn = 3\n', "has no setting 'nn'"),
    ('teacher = "{teacher}"\n[samplers]\nnames = ["euler"]\nnfes = [1]\n', "[samplers] has no setting 'nfes'"),
    ('teacher = "{teacher}"\n[[students]]\npath = "{teacher}/missing"\n', "does not exist"),
    ('teacher = "{teacher}"\n[[accelerators]]\ncache = "nope"\n', "unknown cache 'nope'"),
    ('teacher = "{teacher}"\n[[accelerators]]\ncache = "fbcache"\n', "fbcache works on transformers"),
    ('teacher = "{teacher}"\nn = "many"\n', "setting 'n' expects int"),
    ('teacher = "{teacher}"\n[samplers]\nnames = ["nope"]\n', "unknown sampler 'nope'"),
    ('n = 32\n', "names no teacher"),
])
def test_bad_suites_exit_2_with_one_line(tiny_teacher, tmp_path, capsys, text, message):
    (tmp_path / "s.toml").write_text(text.format(teacher=tiny_teacher))
    assert main(["bench", "--suite", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_default_suite_of_a_unet_has_its_caches_and_only_its_own_students(tiny_teacher, students):
    rows = suite_rows(resolve_suite(teacher=str(tiny_teacher), students=str(students), n=32))
    assert rows[0].role == "converged" and not [r for r in rows if r.role == "student"]  # students of the toy teacher
    assert {r.settings.cache.split(":")[0] for r in rows if r.role == "accelerator"} == {"deepcache", "encprop"}
    assert {r.settings.sampler for r in rows if r.role == "sampler"} == {"euler", "heun", "dpmpp_2m"}


def test_image_rows_get_a_grid_of_the_first_64_samples(tiny_teacher, tmp_path):
    rows = suite_rows(resolve_suite(teacher=str(tiny_teacher)))
    converged, cached = rows[0], next(r for r in rows if r.role == "accelerator")
    assert cached.settings.cache == "deepcache:interval=2,branch=0"
    for planned in (converged, cached):
        row = {"fd": 1.0, "role": planned.role, "family": planned.family, "sampler": planned.settings.sampler,
               "schedule": planned.settings.schedule, "nfe": 35}
        path = bench_run.write_grid(planned, row, tmp_path / f"{planned.role}.png")
        assert Image.open(path).size == (292, 292)  # 8 x 8 digits of 8 px, 1 px gaps, upscaled 4x


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH")
def test_report_renders_in_a_browser_and_sorts(bench, tmp_path):
    html = (bench[0] / "r" / "report.html").read_text()
    # click the SW2 header twice (ascending, then descending), keeping the SW2 column after each click
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", """<script>
const th = [...document.querySelectorAll("#results th")].find(th => th.textContent === "SW2");
const fds = () => [...document.querySelectorAll("#results tbody tr")].map(tr => tr.cells[th.cellIndex].dataset.v);
th.click(); document.body.dataset.asc = fds(); th.click(); document.body.dataset.desc = fds();
window.addEventListener("load", () => document.body.dataset.images = [...document.images].map(im => im.naturalWidth));
</script></body>""").replace("<head>", """<head><script>document.errors = [];
window.addEventListener("error", e => document.errors.push(e.message));
window.addEventListener("load", () => document.body.dataset.errors = document.errors.join("|"));</script>"""))
    flags = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--window-size=1400,2000"]
    shot = subprocess.run([*flags, f"--screenshot={tmp_path / 'shot.png'}", "--enable-logging=stderr", "--v=0",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Uncaught" not in shot.stderr and (tmp_path / "shot.png").stat().st_size > 0
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert '<table id="results" class="sortable">' in dom and dom.count('<tr id="row-') == 6
    # every image decoded (plots and grids): the page records each one's natural size
    sizes = [int(v) for v in re.search(r'data-images="([^"]*)"', dom).group(1).split(",")]
    assert len(sizes) == 3 + 6 and min(sizes) > 0 and 'data-errors=""' in dom
    asc, desc = ([float(v) for v in re.search(f'data-{d}="([^"]*)"', dom).group(1).split(",")] for d in ("asc", "desc"))
    assert asc == sorted(asc) and desc == asc[::-1] and len(asc) == 6
