"""Text-to-image models from every command: sample with prompts (CLI = Python API, CFG with a negative prompt equal
to diffusers' StableDiffusionPipeline), eval on caption prompt sets or a user's prompts, bench's default suite,
accelerate and load back, search-schedule; each bad input one line, exit 2. On a tiny random pipeline."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from fewstep.accelerated import save_accelerated
from fewstep.bench.evaluate import EvalSettings, evaluate_model
from fewstep.bench.suite import resolve_suite, suite_rows
from fewstep.cli import main
from fewstep.metrics import captions
from fewstep.metrics.captions import AttributeConfig
from fewstep.models import load_model
from fewstep.models.tiny import save_tiny_pipeline
from fewstep.plan import PlanSettings, build_plan
from fewstep.sample import prompt_cond, sample_model
from fewstep.samplers import CFGDenoiser, generate, initial_latents
from tests.test_pipelines import PROMPTS, diffusers_images

FAST_RULER = AttributeConfig(steps=40, n_train=1000)  # plumbing only: the real ruler trains 1500 steps on 20000


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny StableDiffusionPipeline (DDIM ending at sigma 0, so decoded images compare with diffusers')."""
    return str(save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "sd", "DDIMScheduler", set_alpha_to_one=True))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return str(path)


@pytest.fixture
def fast_ruler(monkeypatch):
    monkeypatch.setattr(captions, "RULER_CONFIG", FAST_RULER)


def test_cli_sample_with_prompts_writes_a_labelled_grid_equal_to_the_python_api(pipe, prompts_file, tmp_path,
                                                                                 capsys):
    from PIL import Image

    out, tensors = tmp_path / "grid.png", tmp_path / "samples.safetensors"
    assert main(["sample", "--model", pipe, "--prompts", prompts_file, "--n", "4", "--steps", "2", "--out", str(out),
                 "--save-tensor", str(tensors)]) == 0
    printed = capsys.readouterr().out
    assert f"text: 2 prompts from {prompts_file}, CFG 7.5 against the empty prompt" in printed
    assert "decoded by the VAE to 3x16x16" in printed
    assert Image.open(out).size[1] == 2 * (14 + 64 + 2) + 2  # one labelled row of 64-pixel tiles per prompt
    saved = load_file(tensors)
    model = load_model(pipe)
    result = sample_model(model, 4, PlanSettings(steps=2), prompts=PROMPTS)
    assert saved["samples"].shape == (4, 4, 8, 8) and saved["images"].shape == (4, 3, 16, 16)
    assert torch.equal(saved["samples"], result.samples)
    assert torch.equal(saved["images"], model.decode(result.samples))
    assert main(["sample", "--model", pipe, "--prompt", PROMPTS[1], "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "one.png")]) == 0
    assert f"prompt {PROMPTS[1]!r}" in capsys.readouterr().out


def test_prompts_are_encoded_once_and_cycle_over_the_samples(pipe):
    model = load_model(pipe)
    calls = []
    original = model.prompt_encoder.embed
    model.prompt_encoder.embed = lambda prompts: calls.append(list(prompts)) or original(prompts)
    cond = prompt_cond(model, PROMPTS, 5)
    assert calls == [PROMPTS, ["", ""]]  # each distinct prompt once, its null condition once; never per step
    assert torch.equal(cond.text[4], cond.text[0]) and torch.equal(cond.text[3], cond.text[1])


def test_cfg_with_a_negative_prompt_equals_stable_diffusion_pipeline(pipe):
    model = load_model(pipe)
    settings = PlanSettings(steps=4, cfg_scale=4.0)
    negative = sample_model(model, 2, settings, prompts=PROMPTS, negative_prompt="a blue car").samples
    plain = sample_model(model, 2, settings, prompts=PROMPTS).samples
    assert (negative - plain).abs().max() > 1e-2  # the negative prompt is the null condition of guidance
    x = initial_latents(model.denoiser, 0, range(2), model.info.shape, build_plan(model, settings).sigmas[0])
    reference = StableDiffusionPipeline.from_pretrained(pipe, local_files_only=True)
    for latents, neg in ((negative, "a blue car"), (plain, None)):
        assert (model.decode(latents) - diffusers_images(reference, x, 4, 4.0, neg)).abs().max() < 1e-4


def test_cfg_scale_1_samples_unguided_and_no_flag_samples_at_the_default_scale(pipe, tmp_path, capsys):
    """`--cfg-scale 1` is diffusers' guidance_scale=1: the bare denoiser, one pass per step; unset is the model's
    scale (7.5 on a pipeline folder that records none)."""
    model = load_model(pipe)
    plan = build_plan(model, PlanSettings(steps=2))
    cond = prompt_cond(model, PROMPTS[:1], 2)
    bare = generate(model.denoiser, model.info.shape, 2, plan.sigmas, plan.sampler, 0, cond).samples
    guided = generate(CFGDenoiser(model.denoiser, 7.5), model.info.shape, 2, plan.sigmas, plan.sampler, 0,
                      cond).samples
    assert (bare - guided).abs().max() > 1e-2  # guidance changes the samples, so the comparison means something
    for flags, expected, scale in ((["--cfg-scale", "1"], bare, "1"), ([], guided, "7.5")):
        tensors = tmp_path / f"samples{len(flags)}.safetensors"
        assert main(["sample", "--model", pipe, "--prompt", PROMPTS[0], "--n", "2", "--steps", "2", *flags,
                     "--out", str(tmp_path / "grid.png"), "--save-tensor", str(tensors)]) == 0
        assert torch.equal(load_file(tensors)["samples"], expected)
        assert f"CFG {scale} against the empty prompt" in capsys.readouterr().out
    assert build_plan(model, PlanSettings(cfg_scale=1.0)).cfg_scale == 1.0


def test_eval_rows_and_accelerated_folders_record_cfg_scale_1(pipe, prompts_file, tmp_path):
    row = evaluate_model(pipe, EvalSettings(steps=2, n=4, timing_batch=2, prompts=prompts_file, cfg_scale=1.0))
    assert row["cfg_scale"] == 1.0 and row["rows_evaluated"] is None  # no CFG wrapper: one row per sample per step
    info = save_accelerated(pipe, tmp_path / "unguided", PlanSettings(steps=2, cfg_scale=1.0))
    assert info.acceleration == {"cache": None, "guidance": None, "cfg_scale": 1.0, "cfg_interval": None}
    assert build_plan(load_model(tmp_path / "unguided")).cfg_scale == 1.0  # not the 7.5 of a folder without a record
    assert torch.equal(sample_model(str(tmp_path / "unguided"), 2, prompts=PROMPTS).samples,
                       sample_model(pipe, 2, PlanSettings(steps=2, cfg_scale=1.0), prompts=PROMPTS).samples)


def test_eval_on_caption_prompts_reports_both_splits_with_floors(pipe, fast_ruler):
    """A captions-task model measured on both caption splits, reported apart; the tiny pipeline decodes 16x16
    images, a resolution the captions ruler reads as they are (others are resized to the nearest of 16, 32, 64)."""
    row = evaluate_model(pipe, EvalSettings(steps=2, n=12, timing_batch=4, agreement=False, dataset="captions"))
    assert row["prompt_set"] == "captions" and row["split"] == "seen" and row["cfg_scale"] == 7.5
    keys = [f"{k}_accuracy" for k in ("prompt", "count", "layout", "shape", "colour", "size")]
    keys += ["fd", "precision", "recall"]
    for prefix in ("", "heldout_"):
        for key in keys:
            assert math.isfinite(row[prefix + key]) and math.isfinite(row[prefix + key + "_floor"]), prefix + key
            assert row[prefix + key + "_lo"] <= row[prefix + key + "_hi"]
            assert prefix + key in row["jackknife" if key == "fd" else "bootstrap"]
    assert "heldout_bootstrap" not in row and "heldout_jackknife" not in row and row["bootstrap_resamples"] == 100
    assert row["fd"] > row["fd_floor"] and row["prompt_accuracy"] <= row["prompt_accuracy_floor"]  # random weights
    assert row["nfe"] == 2 and row["flops_per_sample"] > 0 and "scored_by" not in row


def test_cli_eval_on_held_out_captions(pipe, fast_ruler, tmp_path, capsys):
    assert main(["eval", "--model", pipe, "--prompts", "captions:heldout", "--n", "12", "--steps", "2",
                 "--timing-batch", "4", "--no-agreement", "--json", "--results", str(tmp_path / "r.jsonl")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompts"] == row["prompt_set"] == "captions:heldout" and row["split"] == "heldout"
    assert 0 <= row["prompt_accuracy"] <= 1 and "heldout_fd" not in row


def test_eval_on_a_users_prompts_is_cost_and_agreement_only(pipe, prompts_file, tmp_path, capsys):
    assert main(["eval", "--model", pipe, "--prompts", prompts_file, "--n", "4", "--steps", "3",
                 "--timing-batch", "2", "--results", str(tmp_path / "r.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "agreement_rmse" in printed and "no reference data" in printed
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert row["prompt_set"] == prompts_file and row["split"] is None and "fd" not in row
    assert row["agreement_rmse"] > 0 and row["agreement_rmse_floor"] == 0.0 and row["seconds_per_sample"] > 0
    assert row["agreement_rmse_lo"] <= row["agreement_rmse_hi"] and set(row["bootstrap"]) == {"agreement_rmse"}


def test_bench_default_suite_of_a_text_teacher(pipe, prompts_file):
    suite = resolve_suite(teacher=pipe, prompts=prompts_file, n=4)
    specs = [(a.cache, a.guidance, tuple(a.cfg_interval)) for a in suite.accelerators]
    assert ("deepcache:interval=2,branch=0", "", ()) in specs and ("", "adaptive:threshold=0.995", ()) in specs
    assert ("", "", (0.28, 5.42)) in specs and suite.prompts == prompts_file
    model = load_model(pipe)  # every row guided at the pipeline's scale: no row leaves CFG out unasked
    assert {build_plan(model, r.settings).cfg_scale for r in suite_rows(suite)} == {7.5}


def test_bench_on_an_accelerated_pipeline_resumes_and_writes_its_grid(pipe, prompts_file, tmp_path, capsys):
    """The converged row of a folder recording dpmpp_2m, 3 steps, CFG 5: measured once, then found again (rows are
    keyed by the resolved plan, recorded CFG scale included); the grid is decoded images."""
    from fewstep.bench.run import run_bench

    fast = tmp_path / "fast"
    save_accelerated(pipe, fast, PlanSettings(sampler="dpmpp_2m", steps=3, cfg_scale=5.0))
    suite = tmp_path / "suite.toml"
    suite.write_text(f'teacher = "{fast}"\nn = 4\ntiming_batch = 2\nprompts = "{prompts_file}"\n')
    assert main(["bench", "--suite", str(suite), "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(rows) == 1 and rows[0]["cfg_scale"] == 5.0 and rows[0]["prompt_set"] == prompts_file
    assert rows[0]["nfe"] == 3 and rows[0]["agreement_rmse"] > 0
    assert len(list((tmp_path / "bench" / "grids").glob("*.png"))) == 1
    capsys.readouterr()
    run_bench(resolve_suite(str(suite)), tmp_path / "bench")
    assert "1 of 1 rows already in" in capsys.readouterr().err


def test_accelerated_pipeline_folder_samples_as_the_plan_applied_by_hand(pipe, tmp_path):
    settings = PlanSettings(sampler="dpmpp_2m", steps=3, cache="deepcache:interval=2,branch=0", cfg_scale=5.0)
    out = tmp_path / "fast"
    assert main(["accelerate", "--model", pipe, "--out", str(out), "--sampler", "dpmpp_2m", "--steps", "3",
                 "--cache", "deepcache:interval=2,branch=0", "--cfg-scale", "5"]) == 0
    assert os.path.samefile(out / "unet" / "diffusion_pytorch_model.safetensors",  # hard-linked, not copied
                            os.path.join(pipe, "unet", "diffusion_pytorch_model.safetensors"))
    StableDiffusionPipeline.from_pretrained(out, local_files_only=True)  # still a pipeline diffusers loads
    fast = sample_model(str(out), 3, prompts=PROMPTS)
    model = load_model(pipe)
    plan = build_plan(model, settings)
    with plan.applied(model) as run:
        by_hand = generate(run.denoiser, model.info.shape, 3, plan.sigmas, plan.sampler, 0,
                           prompt_cond(model, PROMPTS, 3))
    assert torch.equal(fast.samples, by_hand.samples) and fast.nfe == 3
    uncached = sample_model(model, 3, replace(settings, cache="none"), prompts=PROMPTS).samples
    assert not torch.equal(fast.samples, uncached)
    info = save_accelerated(pipe, tmp_path / "dry", settings, dry_run=True)
    assert info.acceleration["cfg_scale"] == 5.0 and not (tmp_path / "dry").exists()


def test_search_schedule_on_a_pipeline_folder(pipe, prompts_file, tmp_path, capsys):
    out = tmp_path / "schedule.json"
    assert main(["search-schedule", "--model", pipe, "--prompts", prompts_file, "--sampler", "euler", "--nfe", "3",
                 "--n", "4", "--evaluations", "4", "--cfg-scale", "2.5", "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    model = load_model(pipe)  # the file's CFG scale is the plan's unless one is given
    assert found["cfg_scale"] == 2.5 and build_plan(model, PlanSettings(schedule=str(out))).cfg_scale == 2.5
    assert build_plan(model, PlanSettings(schedule=str(out), cfg_scale=1.0)).cfg_scale == 1.0
    assert len(found["sigmas"]) == 4 and found["sigmas"][-1] == 0 and found["objective"] == "agreement_rmse"
    assert found["prompts"] == prompts_file and found["quality"] <= found["start_quality"]
    assert main(["sample", "--model", pipe, "--prompts", prompts_file, "--schedule", str(out), "--n", "2",
                 "--out", str(tmp_path / "g.png")]) == 0


CAPTIONS_VERIFIER = "verifier=captions:seed=1"


@pytest.fixture
def fast_verifier(monkeypatch):
    """The captions verifier briefly trained (plumbing only): a spec holds one verifier option, so its recipe's
    defaults are what the test changes."""
    from dataclasses import make_dataclass

    from fewstep.search import verifiers

    config, cls, summary = verifiers.VERIFIERS["captions"]
    fast = make_dataclass("FastCaptionsConfig", [("steps", int, 20), ("n_train", int, 256)], bases=(config,))
    monkeypatch.setitem(verifiers.VERIFIERS, "captions", (fast, cls, summary))
    return "captions:seed=1,steps=20,n_train=256"


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory):
    from fewstep.data.captions import caption_prompts

    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(caption_prompts("seen", 2).captions) + "\n")
    return str(path)


def test_cli_sample_searches_caption_prompts_each_against_its_own_prompt(pipe, captions_file, fast_verifier,
                                                                         tmp_path, capsys):
    from fewstep.data.prompts import read_prompts
    from fewstep.search import build_verifier
    from fewstep.search.candidates import STRIDE
    from fewstep.search.run import model_data

    tensors = tmp_path / "s.safetensors"
    assert main(["sample", "--model", pipe, "--prompts", captions_file, "--n", "8", "--steps", "2", "--search",
                 f"best-of:n=3,{CAPTIONS_VERIFIER}", "--save-tensor", str(tensors),
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "3 candidates per sample, NFE 6 per sample over every candidate (48 in all)" in capsys.readouterr().out
    model = load_model(pipe)
    prompts = [read_prompts(captions_file)[i % 2] for i in range(8)]
    verifier = build_verifier(fast_verifier, model_data(model))
    # candidate c of item i is the plain sample of noise index i + c * STRIDE, scored against prompt i
    candidates = [sample_model(model, 8, PlanSettings(steps=2), prompts=prompts,
                               indices=[i + c * STRIDE for i in range(8)]).samples for c in range(3)]
    scores = torch.stack([verifier.score(model.decode(x), prompts) for x in candidates])
    best = scores.argmax(0)
    assert torch.equal(load_file(tensors)["samples"], torch.stack(candidates)[best, torch.arange(8)])
    assert len(set(best.tolist())) > 1  # the search did choose: not every item kept the same candidate


def test_cli_eval_searches_both_caption_splits_and_counts_every_candidate(pipe, fast_ruler, fast_verifier, tmp_path):
    from fewstep.metrics.cost import count_flops

    results = tmp_path / "r.jsonl"
    assert main(["eval", "--model", pipe, "--prompts", "captions", "--n", "8", "--steps", "2", "--timing-batch", "4",
                 "--no-agreement", "--search", f"best-of:n=2,{CAPTIONS_VERIFIER}", "--results", str(results)]) == 0
    row = json.loads(results.read_text())
    assert (row["nfe"], row["candidates"], row["nfe_total"]) == (4, 2, 32)
    assert (row["heldout_nfe"], row["heldout_candidates"], row["heldout_search"]) == (4, 2, row["search"])
    assert row["verifier"] == fast_verifier and row["ruler_independent"]
    model = load_model(pipe)
    decode = count_flops(lambda: model.decode(torch.zeros(4, *model.info.shape))) / 4  # each candidate is decoded
    assert row["flops_per_sample"] == pytest.approx(
        2 * (row["candidate_flops_per_sample"] + decode) + row["verifier_flops_per_sample"], rel=1e-6)
    assert 0 <= row["prompt_accuracy"] <= 1 and 0 <= row["heldout_prompt_accuracy"] <= 1


def _broken(pipe, tmp_path, how: str) -> str:
    folder = tmp_path / how
    shutil.copytree(pipe, folder)
    if how == "missing":
        shutil.rmtree(folder / "vae")
    else:  # pickle-only U-Net weights
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        torch.save({}, weights.with_suffix(".bin"))
        weights.unlink()
    return str(folder)


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no prompts; write one prompt per line"),
    ("latin1", "is not UTF-8 text"),
    ("no_prompt", "conditioned on text prompts; give --prompt TEXT or --prompts FILE"),
    ("label", "--class-label given, but this model is conditioned on text prompts"),
    ("both", "give --prompt TEXT or --prompts FILE, not both"),
    ("pixels", "a prompt was given, but this model has no text encoder"),
    ("missing", "the pipeline's vae/ component is missing"),
    ("pickle", "holds only pickle weights (diffusion_pytorch_model.bin); fewstep loads safetensors only"),
    ("eval_no_set", "records no prompt set; pass --prompts FILE"),
    ("eval_pixels", "--prompts, --negative-prompt and --clip need a text-to-image model"),
    ("eval_dataset", "a text-to-image model is measured on prompt sets, not on digits"),
    ("search_not_captions", "the captions verifier scores captions of its grammar only: caption 'a red cat' is "
                            "outside the grammar"),
    ("search_classifier", "the classifier verifier does not read prompts"),
    ("eval_search_not_captions", "the captions verifier scores captions of its grammar only"),
])
def test_bad_text_input_is_one_line_and_exit_2(pipe, prompts_file, tmp_path, capsys, case, message):
    from tests.test_diffusers_adapter import save_pipeline

    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "latin1.txt").write_bytes("a caf\xe9 on a tree\n".encode("latin-1"))
    sample = ["sample", "--out", str(tmp_path / "g.png"), "--n", "2", "--steps", "1"]
    if case in ("pixels", "eval_pixels"):
        save_pipeline(tmp_path / "pixels")
    argv = {"empty": [*sample, "--model", pipe, "--prompts", str(tmp_path / "empty.txt")],
            "latin1": [*sample, "--model", pipe, "--prompts", str(tmp_path / "latin1.txt")],
            "no_prompt": [*sample, "--model", pipe],
            "label": [*sample, "--model", pipe, "--prompt", "a cat", "--class-label", "1"],
            "both": [*sample, "--model", pipe, "--prompt", "a cat", "--prompts", prompts_file],
            "pixels": [*sample, "--model", str(tmp_path / "pixels"), "--prompt", "a cat"],
            "missing": [*sample, "--model", _broken(pipe, tmp_path, "missing") if case == "missing" else "",
                        "--prompt", "a cat"],
            "pickle": [*sample, "--model", _broken(pipe, tmp_path, "pickle") if case == "pickle" else "",
                       "--prompt", "a cat"],
            "eval_no_set": ["eval", "--model", pipe, "--n", "4", "--steps", "1"],
            "eval_pixels": ["eval", "--model", str(tmp_path / "pixels"), "--prompts", prompts_file, "--n", "4"],
            "eval_dataset": ["eval", "--model", pipe, "--dataset", "digits", "--n", "4"],
            "search_not_captions": [*sample, "--model", pipe, "--prompts", prompts_file, "--search",
                                    "best-of:n=2,verifier=captions"],
            "search_classifier": [*sample, "--model", pipe, "--prompt", "a cat", "--search", "best-of:n=2"],
            "eval_search_not_captions": ["eval", "--model", pipe, "--prompts", prompts_file, "--n", "4", "--search",
                                         "best-of:n=2,verifier=captions"],
            }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "fewstep" in line or "Traceback" in line]  # not library progress
    assert len(said) == 1 and message in said[0], err
