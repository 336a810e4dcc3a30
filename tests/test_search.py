"""Inference-time search: best-of-N, noise search, verifiers, golden seeds, costs, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from pathlib import Path

from fewstep.cli import main
from fewstep.core.denoiser import CallableDenoiser
from fewstep.core.errors import UserError
from fewstep.metrics.cost import count_flops
from fewstep.models.info import LoadedModel, ModelInfo
from fewstep.models.io import load_model
from fewstep.plan import PlanSettings, build_plan, sample
from fewstep.search import build_verifier, parse_search, rank_seeds, search_sample, spearman
from fewstep.search.run import model_data
from fewstep.search.seeds import golden_seeds, permutation_floor

EULER2 = PlanSettings(sampler="euler", steps=2)


def brightness(samples: torch.Tensor, request) -> torch.Tensor:
    """A user verifier: the mean pixel (module path tests_search_verifier:brightness in the CLI tests)."""
    return samples.flatten(1).mean(1)


@pytest.fixture(scope="module")
def digits(tiny_teacher):
    model = load_model(tiny_teacher / "model")
    return model, build_plan(model, EULER2), torch.arange(12) % 10


@pytest.fixture(scope="module")
def toy(toy_teacher):
    model = load_model(toy_teacher / "model")
    return model, build_plan(model, EULER2), model_data(model)


def test_best_of_one_is_plain_sampling_bit_for_bit(digits):
    model, plan, labels = digits
    plain = sample(model, plan, 12, 3, labels, batch_size=5)
    for spec in ("best-of:n=1", "noise-search:rounds=0,n=1"):
        found = search_sample(model, plan, 12, spec, brightness, seed=3, cond=labels, batch_size=5)
        assert torch.equal(found.samples, plain.samples)
        assert found.nfe == plain.nfe == 2 and found.candidates == 1 and (found.choice == 0).all()


def test_best_of_n_is_never_worse_per_item_and_nests(toy):
    model, plan, data = toy
    scores = {n: search_sample(model, plan, 64, f"best-of:n={n},verifier=density", data=data).scores
              for n in (1, 4, 8)}
    assert (scores[4] >= scores[1]).all() and (scores[8] >= scores[4]).all()
    assert scores[8].mean() > scores[1].mean() + 0.1  # the toy teacher's stray samples are replaced
    found = search_sample(model, plan, 64, "noise-search:rounds=3,n=2,lambda=0.5,verifier=density", data=data)
    assert (found.scores >= scores[1][:64]).all() and found.candidates == 8


def test_costs_count_every_candidate_and_the_verifier_exactly(toy):
    model, plan, data = toy
    kde = build_verifier("density:bandwidth=0.2", data)  # a KDE's matmul: FLOPs the counter sees
    assert kde.flops_per_sample == 2 * 2 * len(data.train) and kde.ruler_independent
    n = 16
    plain = count_flops(lambda: sample(model, plan, n)) / n
    for spec, drawn in (("best-of:n=5", 5), ("noise-search:rounds=2,n=3", 9)):
        found = search_sample(model, plan, n, spec, kde, data)
        assert found.candidates == drawn and found.nfe == drawn * plan.steps
        assert found.verifier_flops_per_sample == drawn * kde.flops_per_sample
        assert found.flops_per_sample == pytest.approx(drawn * plain + found.verifier_flops_per_sample, rel=1e-12)


def test_search_is_deterministic_per_seed_at_any_batch_size(toy):
    model, plan, data = toy
    spec = "noise-search:rounds=2,n=3,lambda=0.4,verifier=density"
    a, b = (search_sample(model, plan, 20, spec, data=data, seed=7, batch_size=bs) for bs in (20, 6))
    assert torch.equal(a.choice, b.choice) and torch.allclose(a.samples, b.samples, atol=1e-5)
    assert torch.equal(a.samples, search_sample(model, plan, 20, spec, data=data, seed=7, batch_size=20).samples)
    assert not torch.allclose(a.samples, search_sample(model, plan, 20, spec, data=data, seed=8).samples)


@pytest.mark.parametrize("fn, message", [
    (lambda x, r: torch.full((len(x),), float("nan")), "non-finite"),
    (lambda x, r: torch.zeros(len(x), 2), "one score per sample"),
    (lambda x, r: [0.0] * len(x), "one score per sample"),
])
def test_a_bad_verifier_is_a_one_line_error(toy, fn, message):
    model, plan, _ = toy
    with pytest.raises(UserError, match=message):
        search_sample(model, plan, 4, "best-of:n=2", fn)


@pytest.mark.parametrize("spec, message", [
    ("best-of:n=0", "at least 1"), ("best-of:m=2", "no setting 'm'"), ("best-of:n=two", "expects"),
    ("beam:n=2", "unknown search"), ("best-of:n=2,verifier=oracle", "unknown verifier"),
    ("best-of:n=2,verifier=classifier", "2-D|labels|image"), ("noise-search:lambda=1.5", "lambda"),
    ("best-of:n=2,verifier=no_such_module:fn", "cannot load"),
])
def test_bad_specs_are_one_line_errors(toy, spec, message):
    model, plan, data = toy
    with pytest.raises(UserError, match=message):
        search_sample(model, plan, 4, spec, data=data)


def test_parse_search_reads_lambda():
    name, config = parse_search("noise-search:rounds=1,n=2,lambda=0.25,verifier=density")
    assert name == "noise-search" and (config.rounds, config.n, config.lambda_, config.verifier) == (1, 2, 0.25,
                                                                                                    "density")


def test_classifier_verifier_is_a_separately_seeded_network(digits):
    model, plan, labels = digits
    data = model_data(model)
    verifier = build_verifier("classifier:seed=1,steps=30", data)
    ruler_seeded = build_verifier("classifier:seed=0,steps=30", data)
    assert verifier.ruler_independent and not ruler_seeded.ruler_independent
    assert not torch.equal(verifier.net.head.weight, ruler_seeded.net.head.weight)
    found = search_sample(model, plan, 12, "best-of:n=3", verifier, data, cond=labels)
    assert (found.scores <= 0).all() and found.verifier_flops_per_sample == 3 * verifier.flops_per_sample > 0


def _noise_model() -> tuple[LoadedModel, object]:
    """A 1-step model whose sample is its unit initial noise: D(x, sigma) = x / sigma, then Euler to sigma 0."""
    denoiser = CallableDenoiser(lambda x, s, c: x / s.view(-1, 1), num_classes=4)
    info = ModelInfo(arch="analytic", network_class="none", num_classes=4, kind="vector", shape=[2], dataset="none")
    model = LoadedModel(denoiser, torch.nn.Identity(), info, path=Path("analytic"))
    return model, build_plan(model, PlanSettings(sampler="euler", steps=1))


def test_golden_seeds_recover_a_known_order_and_transfer():
    model, plan = _noise_model()
    # score = first noise coordinate (what makes a seed golden) + a label-dependent offset and small label noise
    verifier = build_verifier(lambda x, labels: x[:, 0] + labels.double() + 0.01 * x[:, 1], None)
    ranking = golden_seeds(model, plan, 64, verifier, [0, 1], [2, 3])
    noise = sample(model, plan, 64, cond=torch.zeros(64)).samples  # the bank's unit noises themselves
    assert ranking.order[:5] == torch.argsort(noise[:, 0], descending=True)[:5].tolist()
    assert ranking.heldout["spearman"] > 0.99 > ranking.heldout["floor"] and ranking.split_half > 0.99
    # a verifier unrelated to the seed does not transfer: inside the permutation floor
    scores = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    unrelated = rank_seeds(lambda labels: scores[:, list(labels)], [0, 1, 2], [3, 4, 5])
    assert abs(unrelated.heldout["spearman"]) < 0.4 and unrelated.heldout["floor"] > 0.15


def test_spearman_and_its_floor():
    a = torch.arange(50.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert 0.15 < permutation_floor(a, a, 500) < 0.4  # ~1.96 / sqrt(49)


def test_cli_sample_eval_and_seeds(tiny_teacher, tmp_path, monkeypatch, capsys):
    (tmp_path / "tests_search_verifier.py").write_text(
        "def brightness(samples, request):\n    return samples.flatten(1).mean(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    verifier = "verifier=tests_search_verifier:brightness"
    assert main(["sample", "--model", str(tiny_teacher), "--n", "4", "--steps", "2", "--sampler", "euler", "--classes",
                 "--search", f"best-of:n=2,{verifier}", "--out", str(tmp_path / "s.png")]) == 0
    assert "total NFE 4" in capsys.readouterr().out
    results = tmp_path / "r.jsonl"
    assert main(["eval", "--model", str(tiny_teacher), "--n", "20", "--steps", "2", "--sampler", "euler",
                 "--no-agreement", "--timing-batch", "4", "--search", f"noise-search:rounds=1,n=2,{verifier}",
                 "--results", str(results)]) == 0
    row = json.loads(results.read_text())
    assert (row["nfe"], row["candidates"], row["verifier"], row["ruler_independent"]) == (
        8, 4, "tests_search_verifier:brightness", True)
    assert row["search"].startswith("noise-search") and row["accuracy"] >= 0 and row["candidate_flops_per_sample"] > 0
    assert main(["seeds", "--model", str(tiny_teacher), "--bank", "8", "--steps", "1", "--sampler", "euler",
                 "--verifier", "tests_search_verifier:brightness", "--out", str(tmp_path / "seeds")]) == 0
    found = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert sorted(found["order"]) == list(range(8)) and found["heldout"]["labels"] == [5, 6, 7, 8, 9]
    capsys.readouterr()
    assert main(["sample", "--model", str(tiny_teacher), "--search", "best-of:n=0", "--out", "x.png"]) == 2
    assert main(["seeds", "--model", str(tiny_teacher), "--calibration", "12", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("fewstep: error:") for line in err)


def test_captions_verifier_scores_stated_attributes():
    from fewstep.data import load_dataset
    from fewstep.data.captions import caption_prompts, render

    data = load_dataset("captions", resolution=16)
    verifier = build_verifier("captions:seed=1,steps=20,n_train=256", data)
    assert verifier.ruler_independent and verifier.flops_per_sample > 0
    prompts = caption_prompts("seen", 8)
    real = render(prompts.attributes, 16, 5)
    right = verifier.score(real, list(prompts.captions))
    wrong = verifier.score(real, list(prompts.captions[1:]) + [prompts.captions[0]])
    assert right.shape == (8,) and torch.isfinite(right).all() and (right <= 0).all()
    assert right.mean() > wrong.mean()  # even a briefly trained network reads the stated attributes better
    with pytest.raises(UserError, match="one caption per sample"):
        verifier.score(real, torch.zeros(8))


def test_accept_keeps_the_earliest_good_enough_candidate(toy):
    model, plan, data = toy
    plain = sample(model, plan, 32).samples
    everything = search_sample(model, plan, 32, "best-of:n=6,verifier=density,accept=-1e9", data=data)
    assert torch.equal(everything.samples, plain) and everything.candidates == 6  # all accepted: the plain sample
    argmax = search_sample(model, plan, 32, "best-of:n=6,verifier=density", data=data)
    accept = float(argmax.scores.median())
    found = search_sample(model, plan, 32, f"best-of:n=6,verifier=density,accept={accept}", data=data)
    assert (found.choice <= argmax.choice).all() and found.choice.sum() < argmax.choice.sum()
    assert torch.equal(found.scores, argmax.scores.clamp_max(accept))  # as good, up to the threshold
