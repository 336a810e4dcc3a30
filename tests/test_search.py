"""Inference-time search: best-of-N, noise search, verifiers, golden seeds, costs, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from pathlib import Path

from safetensors.torch import load_file

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
    assert "2 candidates per sample, NFE 4 per sample over every candidate (16 in all)" in capsys.readouterr().out
    assert main(["seeds", "--model", str(tiny_teacher), "--bank", "8", "--steps", "1", "--sampler", "euler",
                 "--verifier", "tests_search_verifier:brightness", "--out", str(tmp_path / "seeds")]) == 0
    found = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert sorted(found["order"]) == list(range(8)) and found["heldout"]["labels"] == [5, 6, 7, 8, 9]
    results = tmp_path / "r.jsonl"  # searched from the golden seeds: candidate 0 of item i is the i-th best seed
    assert main(["eval", "--model", str(tiny_teacher), "--n", "20", "--steps", "2", "--sampler", "euler",
                 "--no-agreement", "--timing-batch", "4", "--search", f"noise-search:rounds=1,n=2,{verifier}",
                 "--seeds-from", str(tmp_path / "seeds" / "seeds.json"), "--results", str(results)]) == 0
    row = json.loads(results.read_text())
    assert (row["nfe"], row["candidates"], row["verifier"], row["ruler_independent"]) == (
        8, 4, "tests_search_verifier:brightness", True)
    assert row["search"].startswith("noise-search") and row["accuracy"] >= 0 and row["candidate_flops_per_sample"] > 0
    assert (row["seeds_from"], row["seed"], row["seed_indices"]) == (str(tmp_path / "seeds" / "seeds.json"), 0,
                                                                     found["order"])
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


def test_accept_keeps_the_earliest_good_enough_candidate_and_draws_no_more(toy):
    model, plan, data = toy
    kde = build_verifier("density:bandwidth=0.2", data)
    n, steps = 32, plan.steps
    plain = count_flops(lambda: sample(model, plan, n)) / n
    one = search_sample(model, plan, n, "best-of:n=1", kde)
    for spec in ("best-of:n=6,accept=-1e9", "noise-search:rounds=2,n=3,accept=-1e9"):  # every first candidate passes
        easy = search_sample(model, plan, n, spec, kde)
        assert torch.equal(easy.samples, one.samples) and (easy.candidates, easy.nfe, easy.nfe_total) == (1, steps,
                                                                                                           n * steps)
        assert easy.flops_per_sample == pytest.approx(one.flops_per_sample, rel=1e-12)
        assert easy.verifier_flops_per_sample == one.verifier_flops_per_sample == kde.flops_per_sample
    argmax = search_sample(model, plan, n, "best-of:n=6", kde)
    never = search_sample(model, plan, n, "best-of:n=6,accept=1e9", kde)  # no candidate passes: best-of-6 itself
    assert torch.equal(never.samples, argmax.samples) and torch.equal(never.choice, argmax.choice)
    assert (never.candidates, never.nfe, never.nfe_total) == (6, 6 * steps, 6 * n * steps)
    assert never.flops_per_sample == pytest.approx(argmax.flops_per_sample, rel=1e-12)
    accept = float(argmax.scores.median())
    found = search_sample(model, plan, n, f"best-of:n=6,accept={accept}", kde)
    assert (found.choice <= argmax.choice).all() and found.choice.sum() < argmax.choice.sum()
    assert torch.equal(found.scores, argmax.scores.clamp_max(accept))  # as good, up to the threshold
    drawn = torch.where(found.scores >= accept, found.choice + 1, 6)  # an item stops at its first pass
    assert found.nfe_total == steps * int(drawn.sum()) < 6 * n * steps and found.nfe == pytest.approx(
        steps * float(drawn.double().mean()))
    assert found.verifier_flops_per_sample == pytest.approx(float(drawn.double().mean()) * kde.flops_per_sample)
    assert found.flops_per_sample == pytest.approx(float(drawn.double().mean()) * plain
                                                   + found.verifier_flops_per_sample, rel=1e-12)


def test_seeds_from_samples_exactly_the_ranked_seeds(tiny_teacher, tmp_path, capsys):
    """Sample i starts from the i-th best seed of the ranking, cycling past the bank, on the ranking's noise seed:
    the same sample as plain sampling of that seed (a stochastic sampler: its per-step noise follows the seed too)."""
    order = [4, 0, 2, 1, 3]
    ranking = tmp_path / "seeds.json"
    ranking.write_text(json.dumps({"seed": 3, "bank": 5, "order": order}))
    model = load_model(tiny_teacher / "model")
    settings = PlanSettings(sampler="euler_ancestral", steps=2)
    plain = sample(model, build_plan(model, settings), 5, 3, torch.full((5,), 7)).samples
    tensors = tmp_path / "golden.safetensors"
    assert main(["sample", "--model", str(tiny_teacher), "--n", "7", "--sampler", "euler_ancestral", "--steps", "2",
                 "--class-label", "7", "--seeds-from", str(ranking), "--save-tensor", str(tensors),
                 "--out", str(tmp_path / "g.png")]) == 0
    assert f"seeds: the best of {ranking} (seed 3)" in capsys.readouterr().out
    golden = [4, 0, 2, 1, 3, 4, 0]
    assert torch.equal(load_file(tensors)["samples"], plain[golden])
    searched = search_sample(model, build_plan(model, settings), 7, "best-of:n=1", brightness, seed=3,
                             cond=torch.full((7,), 7), indices=golden)  # candidate 0 of a search: the golden seed
    assert torch.equal(searched.samples, plain[golden])
    capsys.readouterr()
    ranking_bad = tmp_path / "bad.json"
    ranking_bad.write_text(json.dumps({"seed": 0, "order": [0, 0, 1]}))
    for argv in (["--seeds-from", str(ranking), "--seed", "1"], ["--seeds-from", str(ranking_bad)],
                 ["--seeds-from", str(tmp_path / "missing.json")]):
        assert main(["sample", "--model", str(tiny_teacher), *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("fewstep: error: --seeds-from") for line in err), err
