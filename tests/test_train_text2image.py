"""The captions text-to-image teacher (tiny preset): its three stages run and resume bit-exactly, and its export is a
StableDiffusionPipeline folder (or, with --objective flow, a StableDiffusion3Pipeline) that plain diffusers runs and
fewstep loads, both sampling the same images."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from fewstep.cli import main
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.data.captions import load_captions
from fewstep.models import load_model
from fewstep.samplers import SAMPLERS, CFGDenoiser, generate, initial_latents
from fewstep.train.teacher import resolve_train_config, train_teacher

PROMPTS = ["a small red circle on the left", "a large blue square above a small yellow triangle"]
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


def captions_config(**overrides):
    return resolve_train_config({"dataset": "captions", "preset": "tiny", "device": "cpu", **overrides})


@pytest.fixture(scope="module")
def data():
    return load_captions(32, n_train=128, n_test=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("t2i") / "run"
    train_teacher(captions_config(), out, data=data)
    return out


def test_stages_run_and_export_a_pipeline_with_its_record(run):
    cfg = captions_config()
    for stage, steps in (("autoencoder", cfg.vae_steps), ("unet", cfg.steps)):
        rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == steps and all(k.startswith(("loss_", "step", "lr", "seconds")) for k in rows[-1])
    reconstruction = json.loads((run / "autoencoder" / "model" / "reconstruction.json").read_text())
    assert 0 < reconstruction["test"]["mse"] < 1 and reconstruction["test"]["psnr"] > 5
    assert reconstruction["scaling_factor"] > 0
    folder = run / "model"
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "unet", "vae", "text_encoder", "tokenizer",
                                                  "scheduler", "fewstep.json"}
    assert not list(folder.rglob("*.bin")) and all((folder / w).exists() for w in WEIGHTS)
    info = json.loads((folder / "fewstep.json").read_text())
    assert info["kind"] == "latent" and info["shape"] == [4, 16, 16] and info["image_shape"] == [3, 32, 32]
    assert info["dataset"] == "captions" and info["acceleration"]["cfg_scale"] > 1 and info["sampler"]["steps"] > 0
    assert set(info["extra"]["train_seconds"]) == {"autoencoder", "unet"}
    assert info["extra"]["text_encoder"] == "frozen" and 'text_encoder = "frozen"' in (run / "config.toml").read_text()
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["beta_schedule"] == "scaled_linear"


def test_plain_diffusers_runs_the_export_and_equals_fewstep_ddim_with_cfg(run):
    folder = run / "model"
    model = load_model(folder)
    assert model.prompt_encoder is not None and model.autoencoder is not None
    cond = model.encode_prompts(PROMPTS)
    sigmas = make_schedule("scheduler", 6, model.denoiser.sigma_range)
    x = initial_latents(model.denoiser, 0, range(len(PROMPTS)), model.info.shape, sigmas[0])
    latents = SAMPLERS["ddim"].fn(CFGDenoiser(model.denoiser, 3.0), x, sigmas, cond)
    # SD's DDIM config ends at the lowest trained sigma: fewstep's latents there are y + sigma_0 n, diffusers' the
    # unit-variance VP latent, sqrt(alpha_bar_0) times them
    last = model.denoiser.sigma_range.discrete[0]
    ours = model.decode(latents / (1 + last**2).sqrt())
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=6, guidance_scale=3.0, output_type="pt",
                   latents=x / (1 + sigmas[0] ** 2).sqrt()).images * 2 - 1
    assert ref.shape == ours.shape == (2, 3, 32, 32)
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_previews_draw_captions_and_log_their_prompt_accuracy(data, tmp_path, monkeypatch, capsys, objective):
    from fewstep.metrics import captions as ruler
    from tests.test_text_cli import FAST_RULER

    monkeypatch.setattr(ruler, "RULER_CONFIG", FAST_RULER)
    train_teacher(captions_config(sample_every=2, objective=objective), tmp_path / "run", data=data)
    samples = tmp_path / "run" / "unet" / "samples"
    assert sorted(p.name for p in samples.glob("*.png")) == ["step-0000002.png", "step-0000004.png"]
    rows = [json.loads(line) for line in (samples / "quality.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0 <= r["prompt_accuracy"] <= 1 and "colour_accuracy" in r for r in rows)
    assert "preview at step 4: prompt accuracy" in capsys.readouterr().err


def test_killed_stages_resume_to_the_uninterrupted_run(run, data, tmp_path):
    cfg = captions_config()
    out = tmp_path / "resumed"
    train_teacher(cfg, out, stop_at=cfg.vae_steps - 1, data=data)  # killed inside the autoencoder stage
    assert not (out / "autoencoder" / "model").exists() and not (out / "model").exists()
    train_teacher(cfg, out, resume=True, stop_at=cfg.vae_steps + cfg.steps - 1, data=data)  # ... inside the U-Net's
    assert (out / "autoencoder" / "model" / "reconstruction.json").exists() and not (out / "model").exists()
    train_teacher(cfg, out, resume=True, data=data)
    for weights in WEIGHTS:
        a, b = load_file(run / "model" / weights), load_file(out / "model" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights


def test_flow_teacher_exports_an_sd3_pipeline_that_diffusers_samples_as_fewstep_does(data, tmp_path):
    """--objective flow: an SD3 transformer and two CLIP encoders trained by flow matching, saved as a
    StableDiffusion3Pipeline without T5 (its 16 zero tokens recorded as max_sequence_length); it resumes bit-exactly."""
    cfg = captions_config(objective="flow")
    folder = train_teacher(cfg, tmp_path / "flow", data=data)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["text_encoder_3"] == [None, None]
    info = json.loads((folder / "fewstep.json").read_text())
    assert info["parameterization"] == "flow" and info["extra"]["max_sequence_length"] == 16
    assert info["extra"]["text_encoder"] == "trained"  # auto: the flow transformer trains its encoders
    assert info["sampler"]["name"] == "euler" and info["sampler"]["schedule"] == "scheduler"
    model = load_model(folder)
    cond = model.encode_prompts(PROMPTS)
    assert cond.text.shape == (2, 16 + 16, 64) and cond.pooled.shape == (2, 64)  # two 32-wide CLIPs side by side
    sigmas = make_schedule("scheduler", 5, model.denoiser.sigma_range)
    ours = model.decode(generate(CFGDenoiser(model.denoiser, 3.0), model.info.shape, 2, sigmas, "euler", 0,
                                 cond).samples)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=5, guidance_scale=3.0, max_sequence_length=16, output_type="pt",
                   latents=SampleNoise(0, range(2)).randn(model.info.shape), height=32, width=32).images * 2 - 1
    assert ref.shape == ours.shape == (2, 3, 32, 32)
    assert (ours - ref).abs().max() < 1e-4
    out = tmp_path / "resumed"
    train_teacher(cfg, out, stop_at=cfg.vae_steps + cfg.steps - 2, data=data)  # killed inside the transformer's stage
    train_teacher(cfg, out, resume=True, data=data)
    for weights in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        a, b = load_file(folder / weights), load_file(out / "model" / weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights


def test_the_text_encoder_reads_every_training_caption_whole(run, data):
    """Every caption word is one token and no caption is cut (a word split into bytes once truncated the second
    object of 28 % of the captions, docs/BENCHMARKS.md §13)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(run / "model" / "tokenizer")
    words = {w for caption in data.train_text for w in caption.split()}
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)
    assert tokenizer.model_max_length == 16
    assert all(len(ids) <= 16 for ids in tokenizer(data.train_text).input_ids)


def test_long_captions_lengthen_the_text_encoder_up_to_77_tokens(data, tmp_path, capsys):
    from dataclasses import replace

    from fewstep.train.text2image import text_encoder_stage

    for words, length in ((30, 32), (90, 77)):  # BOS + words + EOS, capped at SD's 77
        long = replace(data, train_text=[f"{c} " + " ".join(["and a red circle"] * (words // 4)) for c in
                                         data.train_text])
        longest = max(len(c.split()) for c in long.train_text) + 2
        tokenizer, (encoder,) = text_encoder_stage(captions_config(), long, tmp_path / str(words))
        assert tokenizer.model_max_length == min(longest, 77) == encoder.config.max_position_embeddings
        assert json.loads((tmp_path / str(words) / "tokenizer" / "tokenizer_config.json").read_text())[
            "model_max_length"] == min(longest, 77)
    assert "reads the first 77" in capsys.readouterr().err


@pytest.mark.parametrize("text_encoder", ["frozen", "trained"])
def test_a_frozen_text_encoder_keeps_its_initialisation_and_a_trained_one_learns(data, tmp_path, text_encoder):
    cfg = captions_config(text_encoder=text_encoder, vae_steps=2, steps=2)
    folder = train_teacher(cfg, tmp_path / text_encoder, data=data)
    init = load_file(tmp_path / text_encoder / "text_encoder" / "model.safetensors")
    final = load_file(folder / "text_encoder" / "model.safetensors")
    assert all(torch.equal(init[k], final[k]) for k in init) == (text_encoder == "frozen")
    assert json.loads((folder / "fewstep.json").read_text())["extra"]["text_encoder"] == text_encoder


@pytest.mark.parametrize("flags, message", [
    (["--text-encoder", "nonsense"], "--text-encoder"),
    (["--prediction-type", "sample"], "--prediction-type"),
    (["--objective", "ddpm"], "or flow (an SD3 transformer with flow matching"),
    (["--lr-decay", "linear"], "lr_decay must be one of none, cosine"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    code = main(["train", "--dataset", "captions", "--preset", "tiny", "--out", str(tmp_path / "bad"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "bad").exists()
