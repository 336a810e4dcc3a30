"""Bootstrap and jackknife intervals of the ruler's numbers, and the tie rule: a tie only where the difference's
interval holds 0."""

from __future__ import annotations

import random
import re

import pytest
import torch

from fewstep.bench.report import headline, render_report, resolution_warning, summary_table
from fewstep.bench.run import pooled_over_seeds
from fewstep.data import load_dataset
from fewstep.metrics import evaluate_samples, precision_recall
from fewstep.metrics.image import frechet_distance, image_quality, manifold_hits
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.toy import fresh_samples, mmd2, mmd2_weighted
from fewstep.metrics.uncertainty import (BOOTSTRAP_RESAMPLES, JACKKNIFE_GROUPS, basic_interval, difference,
                                         image_uncertainty, mean_uncertainty, pool_seeds, ratio, resample_indices, ties)


def test_resamples_are_fixed_so_rows_at_the_same_n_are_paired():
    assert torch.equal(resample_indices(50, 0), resample_indices(50, 0))
    assert not torch.equal(resample_indices(50, 0), resample_indices(50, 1))  # samples and reference: two streams
    assert resample_indices(50, 0).shape == (BOOTSTRAP_RESAMPLES, 50)


def test_toy_intervals_are_deterministic_and_hold_the_estimate():
    data = load_dataset("8gaussians")
    row = evaluate_samples(data, data.test[:300])
    assert row == evaluate_samples(data, data.test[:300])
    assert row["sw2_lo"] <= row["sw2"] <= row["sw2_hi"] and row["sw2_hi"] - row["sw2_lo"] > 0
    assert len(row["bootstrap"]["sw2"]) == row["bootstrap_resamples"] == BOOTSTRAP_RESAMPLES
    # a far worse set (every point shifted by 1) is resolved from the good one; the set itself is not
    worse = evaluate_samples(data, data.test[:300] + 1.0)
    assert ties(worse, row)["sw2"] is False and ties(worse, row)["mmd"] is False
    assert set(ties(row, row)) == {*row["bootstrap"], *row["jackknife"]} and all(ties(row, row).values())
    assert [len(side) for side in row["jackknife"]["mmd"]] == [JACKKNIFE_GROUPS] * 2
    lo_hi = difference(worse, row, "sw2")
    assert lo_hi[1] > 0 and lo_hi[0] == pytest.approx(worse["sw2"] - row["sw2"])


def test_image_intervals_from_per_point_hits():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 8, generator=g), torch.randn(150, 8, generator=g) * 1.3
    precision, recall = precision_recall(fake, real)
    hits = manifold_hits(fake, real)
    assert precision == float(hits[0].double().mean()) and recall == float(hits[1].double().mean())
    estimates = {"fd": 1.0, "precision": precision, "recall": recall, "accuracy": 0.5}
    terms = {"accuracy": SampleMean(torch.arange(150) % 2 == 0)}
    out = image_uncertainty(fake, real, estimates, terms)
    assert set(out["bootstrap"]) == {"precision", "recall", "accuracy"} and set(out["jackknife"]) == {"fd"}
    assert out == image_uncertainty(fake, real, estimates, terms)
    assert out["accuracy_lo"] < 0.5 < out["accuracy_hi"] and out["precision_lo"] < precision < out["precision_hi"]


def test_basic_interval_reflects_the_replicates_about_the_estimate():
    # replicates shifted up by 1 (the resampling bias of FD): the basic interval moves down, around the estimate
    assert basic_interval(2.0, [3.0 + i / 100 for i in range(101)]) == pytest.approx((0.025, 0.975), abs=1e-9)


def test_a_share_at_0_or_1_gets_clopper_pearsons_interval_not_the_bootstraps_point():
    hits = SampleMean(torch.ones(500))
    row = mean_uncertainty({"prompt_accuracy": hits}, {"prompt_accuracy": 1.0})
    assert row["prompt_accuracy_hi"] == 1.0 and row["prompt_accuracy_lo"] == pytest.approx(0.025 ** (1 / 500))
    assert 0.992 < row["prompt_accuracy_lo"] < 0.993  # about 1 - 3.7 / n
    objects = SampleMean(torch.zeros(100), torch.full((100,), 2.0))  # 200 objects, none right
    row = mean_uncertainty({"shape_accuracy": objects}, {"shape_accuracy": 0.0})
    assert (row["shape_accuracy_lo"], row["shape_accuracy_hi"]) == pytest.approx((0.0, 1 - 0.025 ** (1 / 200)))
    one_miss = SampleMean(torch.cat([torch.ones(499), torch.zeros(1)]))  # a share inside (0, 1): the bootstrap's
    row = mean_uncertainty({"prompt_accuracy": one_miss}, {"prompt_accuracy": 0.998})
    assert row["prompt_accuracy_lo"] < 0.998 <= row["prompt_accuracy_hi"] <= 1.0
    assert image_uncertainty(torch.randn(40, 3), torch.randn(40, 3) + 100, {"precision": 0.0, "recall": 0.0,
                                                                            "fd": 1.0})["precision_hi"] > 0


def synthetic(role: str, family: str, fd: float, seconds: float, spread: float, base: list[float], nfe: int = 4,
              n: int = 100) -> dict:
    """A bench row whose FD replicates are fd + spread * base (shared base = paired rows)."""
    reps = [fd + spread * b for b in base]
    lo, hi = basic_interval(fd, reps)
    return {"role": role, "family": family, "row_id": f"{family}-{nfe}".replace(" ", "-"), "model": "runs/t/model",
            "sampler": "euler", "schedule": "karras", "steps": nfe, "nfe": nfe, "cache": None, "guidance": None,
            "cfg_scale": 1.0, "fd": fd, "fd_lo": lo, "fd_hi": hi, "fd_floor": 0.5, "floor_n": n, "n": n,
            "bootstrap": {"fd": reps}, "bootstrap_resamples": len(reps), "bootstrap_seed": 0,
            "agreement_rmse": 0.1, "flops_per_sample": 1e8 * nfe, "seconds_per_sample": seconds, "seed": 0,
            "timing_batch": 64, "dataset": "digits", "time_utc": "2026-01-01T00:00:00Z", "machine": {"cpu_count": 2},
            "versions": {"torch": "2"}}


def gaussians(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(200)]


BASE, NOISE = gaussians(0), gaussians(1)


def test_tie_only_where_the_paired_difference_interval_holds_zero():
    ref = synthetic("converged", "teacher (converged)", 1.0, 0.02, 0.1, BASE, 35)
    # paired with the reference: a 0.2 difference with per-resample noise 0.02 is resolved, though both intervals
    # (width ~0.4) overlap and the difference is below the old floor rule's 0.5
    paired = synthetic("student", "s", 1.2, 0.001, 0.1, [b + 0.2 * e for b, e in zip(BASE, NOISE)], 1)
    d = difference(paired, ref, "fd")
    assert d[1] > 0 and ties(paired, ref) == {"fd": False}
    # unpaired replicates with the same spreads: the difference's interval (~ +-0.28) holds 0
    unpaired = synthetic("student", "u", 1.2, 0.001, 0.1, NOISE, 2)
    assert ties(unpaired, ref) == {"fd": True}
    r = ratio(paired, ref, "fd")
    assert r[0] == pytest.approx(1.2) and r[1] < 1.2 < r[2]


def test_headline_states_ratio_and_interval_and_the_warning_fires_when_n_is_too_small():
    ref = synthetic("converged", "teacher (converged)", 1.0, 0.02, 0.1, BASE, 35)
    student = synthetic("student", "consistency student", 1.1, 0.001, 0.1, NOISE, 1)
    text = headline([ref, student])
    assert "consistency student: euler (karras), NFE 1" in text and "1.1× the teacher's FD" in text
    assert "interval of the ratio [" in text and "not resolved" in text and "20×" in text
    assert "data floor (real vs real) is 0.5" in text
    warning = resolution_warning([ref, student])
    assert warning and "n = 100 is too small for FD" in warning and "1 of 1" in warning
    assert "warning: n = 100" in summary_table([ref, student])
    html = render_report([ref, student], {}, {}, "fewstep bench", "2026-01-01")
    assert "class='warning'" in html and html.count("class='tie'") == 1 and "<span class='ci'>[" in html
    ref["timing_repeats_seconds"], student["timing_repeats_seconds"] = [0.1, 0.12, 0.11], [0.004, 0.005, 0.006]
    assert "(over the timing repeats: 16.7–30×)" in headline([ref, student])
    far = synthetic("student", "consistency student", 3.0, 0.001, 0.1, BASE, 1)
    assert resolution_warning([ref, far]) is None and "No student or accelerated setting" in headline([ref, far])


def test_floor_row_says_why_its_n_differs():
    ref = synthetic("converged", "teacher (converged)", 1.0, 0.02, 0.1, BASE, 35, n=1000)
    ref.update(floor_n=899, n_ref=898)
    html = render_report([ref], {}, {}, "", "")
    assert "n = 899 (not 1000: the real pool holds 1797 items, 898 of them are the reference" in html


def accuracy_row(hits: torch.Tensor) -> dict:
    """A row whose accuracy is the mean of per-sample hits, with its bootstrap fields."""
    terms = {"accuracy": SampleMean(hits)}
    estimates = {"accuracy": terms["accuracy"].estimate()}
    return {**estimates, **mean_uncertainty(terms, estimates)}


def test_accuracy_ties_only_when_the_per_sample_hits_do_not_resolve_the_difference():
    u = torch.rand(400, generator=torch.Generator().manual_seed(0))  # shared noise: sample i is the same seed in all
    ref = accuracy_row(u < 0.7)
    assert ref["accuracy"] == pytest.approx(float((u < 0.7).double().mean()))
    assert 0 <= ref["accuracy_lo"] < ref["accuracy"] < ref["accuracy_hi"] <= 1
    worse = accuracy_row(u < 0.5)  # 0.2 lower on every seed: resolved
    d = difference(worse, ref, "accuracy")
    assert d[0] == pytest.approx(-0.2, abs=0.03) and d[2] < 0 and ties(worse, ref) == {"accuracy": False}
    same = accuracy_row(u < 0.7)  # difference 0: a tie
    assert ties(same, ref) == {"accuracy": True}
    v = torch.rand(400, generator=torch.Generator().manual_seed(1))  # the same accuracy from other hits: a tie
    assert ties(accuracy_row(v < 0.7), ref) == {"accuracy": True}
    # paired: 5 points (19 samples of 400 change) is resolved, as an unpaired comparison (interval ~ +-0.06) could not
    assert ties(accuracy_row(u < 0.75), ref) == {"accuracy": False}
    # bounded: a share's interval never leaves [0, 1]
    assert accuracy_row(torch.arange(400) > 2)["accuracy_hi"] == 1.0


def test_mmd_logp_and_mode_coverage_intervals_shrink_with_n():
    data = load_dataset("8gaussians")
    widths = {}
    for n in (100, 400):
        row = evaluate_samples(data, fresh_samples(data, n, seed=7))
        assert {"logp", "logp_finite", "modes_covered", "worst_mode_ratio", "off_mode"} <= set(row["bootstrap"])
        assert set(row["jackknife"]) == {"mmd"}
        assert row["mmd_lo"] <= row["mmd"] <= row["mmd_hi"] and row["logp_lo"] < row["logp"] < row["logp_hi"]
        assert 0 <= row["worst_mode_ratio_lo"] <= row["worst_mode_ratio_hi"] and row["modes_covered_hi"] <= 1
        widths[n] = {k: row[f"{k}_hi"] - row[f"{k}_lo"] for k in ("mmd", "logp")}
    for k in widths[100]:
        assert widths[400][k] < 0.7 * widths[100][k], k  # ~1/sqrt(4) = 0.5 for a mean
    assert mmd2_weighted(data.test[:50], data.test[50:90], torch.ones(1, 50), torch.ones(1, 40))[0] == pytest.approx(
        mmd2(data.test[:50], data.test[50:90]), abs=1e-12)


def seed_rows(fds: list[float], spread: float = 0.05) -> list[dict]:
    """One setting's rows at seeds 0, 1, ...: FD fds[s], replicates fd + spread * (independent noise per seed)."""
    return [synthetic("student", "s", fd, 0.001, spread, gaussians(10 + s)[:100]) | {"seed": s}
            for s, fd in enumerate(fds)]


def test_seed_pooled_interval_holds_seed_and_sample_variation():
    one = seed_rows([1.0])
    pooled = pool_seeds(one)
    assert pooled["bootstrap"]["fd"] == pytest.approx(one[0]["bootstrap"]["fd"], abs=1e-7)  # one seed: its bootstrap
    assert (pooled["fd_lo"], pooled["fd_hi"]) == pytest.approx((one[0]["fd_lo"], one[0]["fd_hi"]), abs=1e-7)
    assert pooled["seeds"] == [0] and pooled["fd"] == one[0]["fd"]
    width = one[0]["fd_hi"] - one[0]["fd_lo"]
    disagree = pool_seeds(seed_rows([1.0, 1.5, 2.0]))
    assert disagree["fd"] == pytest.approx(1.5) and disagree["per_seed"]["fd"] == [1.0, 1.5, 2.0]
    assert disagree["fd_hi"] - disagree["fd_lo"] > 3 * width  # the seeds' spread dominates
    agree = pool_seeds(seed_rows([1.0, 1.0, 1.0]))
    assert agree["fd_hi"] - agree["fd_lo"] < width  # three seeds that agree: narrower than one
    assert pool_seeds(seed_rows([1.0, 1.5, 2.0])[::-1]) | {"seed": 0} == disagree  # the order of the rows is moot


def test_ties_pool_the_seeds_of_each_setting():
    ref = seed_rows([1.0, 1.0, 1.0])
    erratic = seed_rows([1.3, 0.7, 1.0])  # resolved from ref at seed 0 alone, not over its seeds
    for r, b in zip(erratic, ref):
        r["bootstrap"]["fd"] = [v + r["fd"] - b["fd"] for v in b["bootstrap"]["fd"]]  # paired with ref per seed
    assert ties(erratic[0], ref[0]) == {"fd": False}
    assert ties(erratic, ref) == {"fd": True}
    steady = seed_rows([1.3, 1.3, 1.3])
    for r, b in zip(steady, ref):
        r["bootstrap"]["fd"] = [v + 0.3 for v in b["bootstrap"]["fd"]]
    assert ties(steady, ref) == {"fd": False} and difference(steady, ref, "fd")[0] == pytest.approx(0.3)


def test_report_shows_intervals_and_ties_of_every_metric_and_the_pooled_seeds():
    ref = synthetic("converged", "teacher (converged)", 1.0, 0.02, 0.1, BASE, 35)
    student = synthetic("student", "consistency student", 3.0, 0.001, 0.1, BASE, 1)
    for row, mmd, base in ((ref, 0.01, BASE), (student, 0.011, NOISE)):  # mmd: a tie; FD: resolved
        row.update(mmd=mmd, mmd_floor=0.0, **dict(zip(("mmd_lo", "mmd_hi"), basic_interval(mmd, [
            mmd + 0.002 * b for b in base]))))
        row["bootstrap"]["mmd"] = [mmd + 0.002 * b for b in base]
    assert ties(student, ref) == {"fd": False, "mmd": True}
    html = render_report([ref, student], {}, {}, "fewstep bench", "2026-01-01")
    mmd_cell = re.findall(r"<td data-v='0\.011'>([^\n]*?)</td>", html)[0]
    assert "<span class='ci'>[" in mmd_cell and "class='tie'" in mmd_cell and html.count("class='tie'") == 1
    table = summary_table([ref, student])
    line = next(x for x in table.splitlines() if x.startswith("consistency student") and "0.011" in x)
    assert re.search(r" 0\.011 \[[^]]+\] tie ", line) and "mmd" in table and "n = 100, seed 0" in table
    pooled = [pool_seeds([r, r | {"seed": 1}]) for r in (ref, student)]
    assert "seeds 0, 1 (pooled)" in summary_table(pooled)
    assert "two-stage bootstrap" in render_report(pooled, {}, {}, "", "")


def test_bench_pools_rows_over_the_seeds_every_row_has():
    ref = synthetic("converged", "teacher (converged)", 1.0, 0.02, 0.1, BASE, 35) | {"model_hash": "t"}
    student = synthetic("student", "s", 1.2, 0.001, 0.1, NOISE, 1) | {"model_hash": "s"}
    at_1 = [ref | {"seed": 1, "fd": 1.1}, student | {"seed": 1, "fd": 1.4}]
    rows = pooled_over_seeds([ref, student], [ref, student, *at_1])
    assert [r["seeds"] for r in rows] == [[0, 1], [0, 1]] and rows[1]["fd"] == pytest.approx(1.3)
    assert rows[1]["row_id"] == student["row_id"]  # the planned row's fields
    # a setting measured at seed 0 only: nothing is pooled, so the rows stay paired
    assert pooled_over_seeds([ref, student], [ref, student, at_1[0]]) == [ref, student]


def test_pooling_keeps_only_the_metrics_every_seed_has():
    old = seed_rows([1.0])[0] | {"seed": 1, "bootstrap": {}}  # a row from before the intervals
    del old["fd_lo"], old["fd_hi"]
    pooled = pool_seeds([seed_rows([1.2])[0], old])
    assert pooled["bootstrap"] == {} and "fd_lo" not in pooled and pooled["fd"] == 1.2 and pooled["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="one row per seed"):
        pool_seeds(seed_rows([1.0, 1.0])[:1] * 2)


def gaussian_features(seed: int, shift: float = 0.0, n: int = 200, dim: int = 64) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


def fd_row(samples: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict:
    """A row of FD (precision, recall) with its intervals, as the image ruler writes it."""
    estimates = image_quality(samples, reference)
    return {**estimates, "n": len(samples), "seed": seed, **image_uncertainty(samples, reference, estimates)}


def test_fd_jackknife_interval_holds_the_estimate_and_matches_independent_redraws():
    # 64-d at n = 200: resampling with replacement would put FD's replicates far above the estimate (n_eff ~ 0.63 n)
    reference = gaussian_features(100)
    redraws = torch.tensor([frechet_distance(gaussian_features(s), gaussian_features(200 + s)) for s in range(6)])
    row = fd_row(gaussian_features(0), reference)
    half = (row["fd_hi"] - row["fd_lo"]) / 2
    assert row["fd_lo"] < row["fd"] < row["fd_hi"] and row["fd"] - row["fd_lo"] == pytest.approx(half)
    ideal = 1.96 * float(redraws.std())  # the half-width of a normal interval from the true sd
    assert ideal / 4 < half < 4 * ideal  # (the jackknife over-states FD's sd: here by ~2.2)
    assert "fd" not in row["bootstrap"] and [len(s) for s in row["jackknife"]["fd"]] == [JACKKNIFE_GROUPS] * 2
    # another draw of the same law against the same reference ties; a shift of 0.3 per dimension (+5.8) does not
    same, shifted = fd_row(gaussian_features(1), reference), fd_row(gaussian_features(1, 0.3), reference)
    assert ties(same, row)["fd"] is True
    d = difference(shifted, row, "fd")
    assert ties(shifted, row)["fd"] is False and d[1] > 0 and d[0] == pytest.approx(shifted["fd"] - row["fd"])
    r = ratio(shifted, row, "fd")
    assert r[1] < shifted["fd"] / row["fd"] == r[0] < r[2]


def test_jackknife_rows_pool_over_seeds_and_old_rows_still_load():
    reference = gaussian_features(100)
    rows = [fd_row(gaussian_features(s), reference, seed=s) for s in range(3)]
    one = pool_seeds(rows[:1])
    assert (one["fd_lo"], one["fd_hi"]) == pytest.approx((rows[0]["fd_lo"], rows[0]["fd_hi"]))  # one seed: its own
    pooled = pool_seeds(rows)
    assert pooled["fd"] == pytest.approx(sum(r["fd"] for r in rows) / 3) and pooled["fd_lo"] < pooled["fd"]
    assert pooled["fd_hi"] - pooled["fd_lo"] < rows[0]["fd_hi"] - rows[0]["fd_lo"]  # three seeds: narrower than one
    disagree = [r | {"fd": r["fd"] + 3 * s} for s, r in enumerate(rows)]  # seeds 3 apart: the spread dominates
    assert pool_seeds(disagree)["fd_hi"] - pool_seeds(disagree)["fd_lo"] > 3 * (pooled["fd_hi"] - pooled["fd_lo"])
    shifted = [fd_row(gaussian_features(s, 0.3), reference, seed=s) for s in range(3)]
    assert ties(rows, rows[::-1])["fd"] and ties(shifted, rows)["fd"] is False
    # a row written before the jackknife (FD replicates in `bootstrap`) pools and compares with old rows as before,
    # and with a new row gives no FD interval rather than an unpaired one
    old = synthetic("student", "s", 11.0, 0.001, 0.5, BASE, n=200) | {"seed": 1}
    assert ties(old, old | {"seed": 2}) == {"fd": True} and difference(rows[0], old, "fd") is None
    assert "fd" not in ties(rows[0], old) and "fd" not in ties(old, rows[0])
    mixed = pool_seeds([rows[0], old])
    assert mixed["fd"] == rows[0]["fd"] and "fd_lo" not in mixed and "fd" not in mixed["per_seed"]  # not pooled


def test_jackknife_groups_hold_every_class_of_labels_that_cycle_with_the_index():
    # a class-conditional model's samples come labelled i mod 10 (digits: 0, 1, ..., 9, 0, ...). Grouped by index
    # mod 20, each group held one class, every deletion took half of it, and the leave-group FDs sat far above the
    # estimate: on digits the interval was about ten times too wide (a teacher's FD 0.196 [0, 2.91], now [0, 0.43])
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, 16, generator=g)
    samples = centres[torch.arange(2000) % 10] + torch.randn(2000, 16, generator=g)
    reference = centres[torch.randint(10, (900,), generator=g)] + torch.randn(900, 16, generator=g)
    fd = frechet_distance(samples, reference)
    ordered = fd_row(samples, reference)
    shuffled = fd_row(samples[torch.randperm(2000, generator=g)], reference)  # no order left to line up with
    leave_group = torch.tensor(ordered["jackknife"]["fd"][0])
    assert float((leave_group - fd).abs().max()) < 0.5 * fd  # each deletion keeps the classes' shares
    width = lambda row: row["fd_hi"] - row["fd_lo"]  # noqa: E731
    assert width(ordered) < 2 * width(shuffled)
    assert ordered["jackknife_grouping"] == "shuffled" and difference(ordered, shuffled, "fd") is not None
    old = ordered | {"jackknife_grouping": None, "seed": 1}  # a row grouped by index mod g, before the fix
    assert difference(ordered, old, "fd") is None and "fd_lo" not in pool_seeds([ordered, old])  # never mixed
