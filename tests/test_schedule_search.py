"""Searched sigma schedules: better than Karras at 4 NFE on a 2-D set, held-out seeds, usable by sample and eval."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.accel.schedule_search import coordinate_search, search_schedule
from fewstep.core.schedules import read_schedule_file
from fewstep.bench.evaluate import EvalSettings, evaluate_model
from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.core.schedules import make_schedule
from fewstep.data import load_dataset
from fewstep.metrics import evaluate_samples
from fewstep.models import load_model
from fewstep.plan import PlanSettings
from fewstep.sample import sample_model
from fewstep.samplers import generate


@pytest.fixture(scope="module")
def searched(toy_teacher, tmp_path_factory):
    """The CLI's search: DPM-Solver++(2M) at 4 NFE, 30 schedules of 500 held-out samples."""
    out = tmp_path_factory.mktemp("schedule") / "dpmpp_2m-4.json"
    assert main(["search-schedule", "--model", str(toy_teacher), "--sampler", "dpmpp_2m", "--nfe", "4", "--n", "500",
                 "--evaluations", "30", "--out", str(out)]) == 0
    return out


def test_searched_schedule_beats_karras_on_the_rulers_seeds(toy_teacher, searched):
    result = json.loads(searched.read_text())
    assert result["sampler"] == "dpmpp_2m" and result["nfe"] == 4 and len(result["sigmas"]) == 5
    assert result["seed"] == 1000 and result["evaluations"] <= 30 and result["search_seconds"] > 0
    assert result["search_network_evaluations"] == result["evaluations"] * 500 * 4
    assert result["quality"] < result["start_quality"]
    model, data = load_model(toy_teacher), load_dataset("8gaussians")
    karras = make_schedule("karras", 4, model.denoiser.sigma_range)
    sw2 = {name: evaluate_samples(data, generate(model.denoiser, [2], 2000, sigmas, "dpmpp_2m", seed=0).samples)["sw2"]
           for name, sigmas in (("karras", karras), ("searched", torch.tensor(result["sigmas"])))}
    assert sw2["searched"] < 0.8 * sw2["karras"]


def test_sample_and_eval_use_a_searched_schedule(toy_teacher, searched):
    sigmas = torch.tensor(read_schedule_file(searched)["sigmas"])
    out = sample_model(toy_teacher, 16, PlanSettings(schedule=str(searched)))  # sampler: the one the schedule was searched for
    model = load_model(toy_teacher)
    assert out.nfe == 4 and torch.equal(out.samples, generate(model.denoiser, [2], 16, sigmas, "dpmpp_2m").samples)
    row = evaluate_model(toy_teacher, EvalSettings(schedule=str(searched), n=64, timing_batch=8, agreement=False))
    assert (row["sampler"], row["steps"], row["nfe"], row["schedule"]) == ("dpmpp_2m", 4, 4, str(searched))


def test_coordinate_search_finds_a_known_minimum():
    target = torch.tensor([2.0, 0.5, -1.0, -3.0], dtype=torch.float64)
    best, value = coordinate_search(lambda u: float((u - target).square().sum()),
                                    torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64), -5.0, 200)
    assert best[0] == 2.0 and value < 1e-3 and (best[1:] < best[:-1]).all()


def test_search_mistakes(toy_teacher, tmp_path):
    with pytest.raises(UserError, match="held-out"):
        search_schedule(toy_teacher, "euler", 4, seed=0)
    with pytest.raises(UserError, match="no knot"):
        search_schedule(toy_teacher, "euler", 1)
    (tmp_path / "bad.json").write_text(json.dumps({"sigmas": [1.0, 2.0]}))
    with pytest.raises(UserError, match="strictly decreasing"):
        read_schedule_file(tmp_path / "bad.json")
    assert main(["sample", "--model", str(toy_teacher), "--schedule", str(tmp_path / "none.json"),
                 "--out", str(tmp_path / "x.png")]) == 2
    for scale in ("3", -1, None):  # a recorded CFG scale is a positive number
        (tmp_path / "scale.json").write_text(json.dumps({"sigmas": [2.0, 1.0, 0.0], "sampler": "euler",
                                                         "cfg_scale": scale}))
        with pytest.raises(UserError, match="'cfg_scale' must be a positive number"):
            read_schedule_file(tmp_path / "scale.json")
    assert main(["sample", "--model", str(toy_teacher), "--schedule", str(tmp_path / "scale.json"),
                 "--out", str(tmp_path / "x.png")]) == 2
