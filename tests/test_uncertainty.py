"""Bootstrap intervals of the ruler's numbers, and the tie rule: a tie only where the difference's interval holds 0."""

from __future__ import annotations

import random

import pytest
import torch

from fewstep.bench.report import headline, render_report, resolution_warning, summary_table
from fewstep.data import load_dataset
from fewstep.metrics import evaluate_samples, precision_recall
from fewstep.metrics.image import manifold_hits
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.uncertainty import (BOOTSTRAP_RESAMPLES, basic_interval, difference, image_uncertainty, ratio,
                                         resample_indices, ties, toy_uncertainty)


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
    assert set(ties(row, row)) == set(row["bootstrap"]) and all(ties(row, row).values())
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
    assert set(out["bootstrap"]) == {"fd", "precision", "recall", "accuracy"}
    assert out == image_uncertainty(fake, real, estimates, terms)
    assert out["accuracy_lo"] < 0.5 < out["accuracy_hi"] and out["precision_lo"] < precision < out["precision_hi"]


def test_basic_interval_reflects_the_replicates_about_the_estimate():
    # replicates shifted up by 1 (the resampling bias of FD): the basic interval moves down, around the estimate
    assert basic_interval(2.0, [3.0 + i / 100 for i in range(101)]) == pytest.approx((0.025, 0.975), abs=1e-9)


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
