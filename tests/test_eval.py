"""`fewstep eval`: one reproducible result row per setting, cached teacher references, sweeps with CSV and plot."""

from __future__ import annotations

import json

from fewstep.bench.evaluate import EvalSettings, evaluate_model, steps_for_nfe
from fewstep.bench.reference import REFERENCE_STEPS
from fewstep.cli import main
from fewstep.metrics.cache import cache_dir


def fast(**kw) -> EvalSettings:
    return EvalSettings(**{"n": 256, "timing_batch": 16, **kw})


def test_row_is_complete_deterministic_and_reference_is_cached(toy_teacher):
    row = evaluate_model(toy_teacher, fast(sampler="heun", steps=4))
    for key in ("sw2", "sw2_floor", "mmd", "mmd_floor", "logp", "agreement_rmse", "nfe", "flops_per_sample",
                "seconds_per_sample", "peak_memory_bytes", "model_hash", "versions", "machine", "command"):
        assert key in row, key
    assert row["nfe"] == 7 and row["flops_per_sample"] > 0 and row["seconds_per_sample"] > 0
    assert len(row["timing_repeats_seconds"]) == 5
    assert list((cache_dir() / "trajectories").glob("*.safetensors"))
    again = evaluate_model(toy_teacher, fast(sampler="heun", steps=4))
    assert all(again[k] == row[k] for k in ("sw2", "mmd", "logp", "agreement_rmse", "flops_per_sample"))
    assert {"sw2", "logp", "logp_finite", "agreement_rmse"} <= set(row["bootstrap"]) == set(again["bootstrap"])
    assert set(row["jackknife"]) == {"mmd"} and row["jackknife"] == again["jackknife"]


def test_converged_sampler_agrees_with_reference_and_cheap_one_less(toy_teacher):
    converged = evaluate_model(toy_teacher, fast(sampler="heun", steps=REFERENCE_STEPS))
    cheap = evaluate_model(toy_teacher, fast(sampler="euler", steps=2))
    assert converged["agreement_rmse"] < 1e-5
    assert cheap["agreement_rmse"] > 10 * converged["agreement_rmse"] + 1e-3
    assert cheap["flops_per_sample"] < converged["flops_per_sample"] / 20


def test_steps_for_nfe():
    assert steps_for_nfe("euler", 8) == 8 and steps_for_nfe("heun", 8) == 4 and steps_for_nfe("heun", 1) == 1


def test_cli_sweep_writes_results_csv_and_plot(toy_teacher, tmp_path, capsys):
    results = tmp_path / "res.jsonl"
    code = main(["eval", "--model", str(toy_teacher), "--sweep", "--samplers", "euler,heun", "--nfe", "4,8",
                 "--n", "128", "--timing-batch", "8", "--out", str(tmp_path), "--results", "res.jsonl", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("euler", 4), ("euler", 8), ("heun", 3), ("heun", 7)]
    assert len(results.read_text().splitlines()) == 4
    assert (tmp_path / "res-sweep.csv").exists() and (tmp_path / "res-sweep.png").exists()  # under --out
    assert all(r["sw2_lo"] < r["sw2_hi"] and len(r["bootstrap"]["sw2"]) == 100 for r in rows)
    main(["eval", "--model", str(toy_teacher), "--n", "64", "--steps", "2", "--timing-batch", "8",
          "--results", str(results), "--no-agreement"])
    assert len(results.read_text().splitlines()) == 5  # results only grow


def test_image_eval_has_class_metrics(tiny_teacher):
    row = evaluate_model(tiny_teacher, fast(n=64, steps=3, cfg_scale=2.0))
    for key in ("fd", "fd_floor", "precision", "recall", "accuracy", "confidence", "agreement_rmse"):
        assert key in row, key
    assert set(row["bootstrap"]) == {"precision", "recall", "accuracy", "confidence", "agreement_rmse",
                                     "agreement_feature_rmse"} and set(row["jackknife"]) == {"fd"}


def test_eval_errors(tiny_teacher, capsys):
    assert main(["eval", "--model", str(tiny_teacher), "--steps", "0"]) == 2
    assert main(["eval", "--model", str(tiny_teacher), "--cfg-interval", "1"]) == 2
    assert "two sigmas" in capsys.readouterr().err
