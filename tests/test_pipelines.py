"""Stable-Diffusion-layout pipeline folders: fewstep's samplers with classifier-free guidance equal diffusers' own
StableDiffusion(XL / 3)Pipeline from the same initial latents; scheduler settings honoured or refused; bad folders and
wrong conditions refused with one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from fewstep.core.cond import Cond
from fewstep.core.noise import SampleNoise
from fewstep.core.errors import UserError
from fewstep.core.schedules import make_schedule
from fewstep.models import load_model
from fewstep.models.tiny import build_clip_tokenizer, save_tiny_pipeline, save_tiny_sd3_pipeline, tiny_scheduler
from fewstep.samplers import SAMPLERS, CFGDenoiser, generate, initial_latents

PROMPTS = ["a red cat", "a photo of a small dog on a tree"]
VP_COORDINATES = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "LCMScheduler", "PNDMScheduler")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny pipeline per prediction type; tests copy it and swap the scheduler config."""
    root = tmp_path_factory.mktemp("sd")
    return {p: save_tiny_pipeline(root / p, prediction_type=p) for p in ("epsilon", "v_prediction")}


def with_scheduler(folder, tmp_path, name: str, prediction_type: str = "epsilon", **settings):
    """A copy of a pipeline folder whose scheduler is `name` with `settings` (on SD's noise schedule)."""
    out = tmp_path / name
    shutil.copytree(folder, out)
    shutil.rmtree(out / "scheduler")
    tiny_scheduler(name, prediction_type, **settings).save_pretrained(out / "scheduler")
    index = json.loads((out / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", name]}))
    return out


def pipeline_latents(x: torch.Tensor, pipe, steps: int) -> torch.Tensor:
    """The `latents=` that make the pipeline start where fewstep starts: it multiplies them by init_noise_sigma.

    fewstep's x is in EDM coordinates; the DDIM / DDPM / PNDM / DPM-Solver schedulers step the unit-variance VP
    latent x / sqrt(1 + sigma^2), the Euler ones the EDM latent itself.
    """
    sched = pipe.scheduler
    sched.set_timesteps(steps)  # Euler's init_noise_sigma depends on the steps' sigmas
    if type(sched).__name__ in VP_COORDINATES:
        sigma0 = sched.sigmas[0] if hasattr(sched, "sigmas") else ((1 - sched.alphas_cumprod[sched.timesteps[0]])
                                                                   / sched.alphas_cumprod[sched.timesteps[0]]).sqrt()
        return x / (1 + sigma0.double() ** 2).sqrt().float() / sched.init_noise_sigma
    return x / sched.init_noise_sigma


def fewstep_images(folder, steps: int, cfg_scale: float, negative=None, seed: int = 0):
    """fewstep's run from a loaded pipeline folder, as the CLI does it: record -> sigmas -> latents -> CFG -> decode."""
    model = load_model(folder)
    cond = model.encode_prompts(PROMPTS, negative)
    sigmas = make_schedule(model.info.sampler["schedule"], steps, model.denoiser.sigma_range)
    x = initial_latents(model.denoiser, seed, range(len(PROMPTS)), model.info.shape, sigmas[0])
    guided = CFGDenoiser(model.denoiser, cfg_scale)
    latents = SAMPLERS[model.info.sampler["name"]].fn(guided, x, sigmas, cond)
    return model, x, latents, model.decode(latents)


def diffusers_images(pipe, x: torch.Tensor, steps: int, cfg_scale: float, negative=None) -> torch.Tensor:
    with torch.no_grad():
        latents = pipeline_latents(x, pipe, steps)
        images = pipe(PROMPTS, negative_prompt=None if negative is None else [negative] * len(PROMPTS),
                      num_inference_steps=steps, guidance_scale=cfg_scale, latents=latents, output_type="pt").images
    return images * 2 - 1  # the pipeline's [0, 1] images back to fewstep's [-1, 1]


CASES = [  # scheduler, settings, the fewstep sampler its folder records, negative prompt
    ("DDIMScheduler", {"set_alpha_to_one": True}, "ddim", None),
    ("EulerDiscreteScheduler", {}, "euler", None),  # linspace spacing: fractional timesteps, sigma linear in t
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "euler", "a blue car"),
    ("DPMSolverMultistepScheduler", {}, "dpmpp_2m", "a blue car"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "dpmpp_2m", None),  # rounded timesteps
]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scheduler, settings, sampler, negative", CASES)
def test_guided_sampling_equals_stable_diffusion_pipeline(base, tmp_path, prediction_type, scheduler, settings,
                                                          sampler, negative):
    folder = with_scheduler(base[prediction_type], tmp_path, scheduler, prediction_type, **settings)
    model, x, _, ours = fewstep_images(folder, 8, 4.0, negative)
    assert model.info.sampler["name"] == sampler and model.info.sampler["schedule"] == "scheduler"
    assert model.info.shape == [4, 8, 8] and model.info.image_shape == [3, 16, 16] and model.info.kind == "latent"
    ref = diffusers_images(StableDiffusionPipeline.from_pretrained(folder, local_files_only=True), x, 8, 4.0, negative)
    assert ours.shape == ref.shape == (2, 3, 16, 16)
    assert ((ref > -1) & (ref < 1)).float().mean() > 0.9  # images not saturated: the comparison means something
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_plms_equals_stable_diffusion_1_default_pndm(base, tmp_path, steps):
    """SD 1.x's own scheduler (PNDM, skip_prk_steps, leading + offset 1, set_alpha_to_one=false) mirrored by fewstep's
    plms; the latents end at the lowest trained sigma, so they are compared in the pipeline's VP coordinates."""
    folder = with_scheduler(base["epsilon"], tmp_path, "PNDMScheduler")
    model, x, latents, _ = fewstep_images(folder, steps, 3.0)
    sigma_last = model.denoiser.sigma_range.discrete[0]
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, output_type="latent",
                   latents=pipeline_latents(x, pipe, steps)).images
    assert (latents / (1 + sigma_last**2).sqrt() - ref).abs().max() < 1e-4


def test_sdxl_layout_equals_stable_diffusion_xl_pipeline(tmp_path):
    """Two text encoders, pooled embeddings and time ids as added conditions; the zero null condition."""
    folder = save_tiny_pipeline(tmp_path / "xl", "EulerDiscreteScheduler", sdxl=True, timestep_spacing="leading")
    model, x, _, ours = fewstep_images(folder, 6, 3.0)
    cond = model.encode_prompts(PROMPTS)
    assert cond.text.shape == (2, 77, 64) and cond.pooled.shape == (2, 32) and cond.added["time_ids"].shape == (2, 6)
    assert not cond.negative.text.any() and not cond.negative.pooled.any()  # force_zeros_for_empty_prompt
    ref = diffusers_images(StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True), x, 6, 3.0)
    assert (ours - ref).abs().max() < 1e-4
    _, _, _, with_negative = fewstep_images(folder, 6, 3.0, negative="a blue car")
    ref = diffusers_images(StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True), x, 6, 3.0,
                           "a blue car")
    assert (with_negative - ref).abs().max() < 1e-4


@pytest.mark.parametrize("settings, negative, t5", [({"shift": 3.0}, None, False),
                                                     ({"use_dynamic_shifting": True}, "a blue car", False),
                                                     ({"shift": 3.0}, "a blue car", True)])
def test_sd3_layout_equals_stable_diffusion_3_pipeline(tmp_path, settings, negative, t5):
    """Two CLIP encoders side by side, padded to the joint width, then T5's 256 tokens (zeros without T5); pooled
    projections side by side; the shifted flow schedule; the VAE's shift and scale; prompts encoded by fewstep."""
    folder = save_tiny_sd3_pipeline(tmp_path / "sd3", t5=t5, **settings)
    model = load_model(folder)
    assert model.info.kind == "latent" and model.info.shape == [4, 8, 8] and model.info.image_shape == [3, 16, 16]
    cond = model.encode_prompts(PROMPTS, negative)
    assert cond.text.shape == (2, 77 + 256, 64) and cond.pooled.shape == (2, 64)
    assert cond.text[:, 77:].any() == t5 and cond.text[:, :77].any()
    sigmas = make_schedule(model.info.sampler["schedule"], 5, model.denoiser.sigma_range)
    ours = model.decode(generate(CFGDenoiser(model.denoiser, 4.0), model.info.shape, 2, sigmas, "euler", 0,
                                 cond).samples)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True,
                                                    **({} if t5 else {"text_encoder_3": None, "tokenizer_3": None}))
    with torch.no_grad():
        ref = pipe(PROMPTS, negative_prompt=None if negative is None else [negative] * 2, num_inference_steps=5,
                   guidance_scale=4.0, latents=SampleNoise(0, range(2)).randn(model.info.shape), height=16, width=16,
                   output_type="pt").images * 2 - 1
    assert ((ref > -1) & (ref < 1)).float().mean() > 0.9
    assert (ours - ref).abs().max() < 1e-4


def test_sd3_folder_without_text_encoders_stays_a_bare_transformer(tmp_path):
    """An SD3 pipeline saved without its encoders (text_encoder: [null, null]) takes prompt embeddings, as before."""
    folder = save_tiny_sd3_pipeline(tmp_path / "sd3")
    index = json.loads((folder / "model_index.json").read_text())
    names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    (folder / "model_index.json").write_text(json.dumps({**index, **{k: [None, None] for k in names}}))
    model = load_model(folder)
    assert model.prompt_encoder is None and model.info.extra["text_conditioned"]
    with pytest.raises(UserError, match="has no text encoder"):
        model.encode_prompts(PROMPTS)
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": ["transformers", "BertModel"]}))
    with pytest.raises(UserError, match="text_encoder_3 is a BertModel; fewstep reads T5EncoderModel"):
        load_model(folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": ["transformers", "T5EncoderModel"]}))
    with pytest.raises(UserError, match="has text_encoder_3 but not its partner"):
        load_model(folder)


def test_set_alpha_to_one_false_stops_at_the_lowest_trained_sigma(base, tmp_path):
    """Stable Diffusion's own DDIM config: the last step lands on alpha_bar_0, not on 0. fewstep's latents are in
    EDM coordinates there (y + sigma_0 n); diffusers' are the VP latent, sqrt(alpha_bar_0) times them."""
    folder = with_scheduler(base["epsilon"], tmp_path, "DDIMScheduler")  # SD: leading, steps_offset=1
    model, x, latents, _ = fewstep_images(folder, 5, 2.0)
    sigmas = make_schedule("scheduler", 5, model.denoiser.sigma_range)
    table = model.denoiser.sigma_range.discrete
    assert torch.equal(sigmas, torch.cat([table[torch.tensor([801, 601, 401, 201, 1])], table[:1]]))
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=5, guidance_scale=2.0, latents=x / (1 + sigmas[0] ** 2).sqrt(),
                   output_type="latent").images
    assert (latents / (1 + table[0] ** 2).sqrt() - ref).abs().max() < 1e-4


def test_default_record_mirrors_the_scheduler(base, tmp_path):
    expected = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "EulerAncestralDiscreteScheduler": "euler_ancestral",
                "HeunDiscreteScheduler": "heun", "LCMScheduler": "consistency", "PNDMScheduler": "plms",
                "UniPCMultistepScheduler": "dpmpp_2m"}
    for name, sampler in expected.items():
        model = load_model(with_scheduler(base["epsilon"], tmp_path, name))
        assert model.info.sampler["name"] == sampler
        assert ("note" in model.info.sampler) == (name == "UniPCMultistepScheduler")
        sigmas = make_schedule("scheduler", 4, model.denoiser.sigma_range)
        assert len(sigmas) == 5 and (sigmas[1:] < sigmas[:-1]).all()
    dpm = load_model(with_scheduler(base["epsilon"], tmp_path, "DPMSolverMultistepScheduler", solver_order=3,
                                    algorithm_type="sde-dpmsolver++"))
    assert dpm.info.sampler["name"] == "dpmpp_3m" and "sde-dpmsolver++" in dpm.info.sampler["note"]


def test_lcm_boundary_condition_and_consistency_sampling(base, tmp_path):
    """LCMScheduler: D = c_skip(t) x_t + c_out(t) x0 with its timestep_scaling; its multistep sampler re-noises
    with fresh noise, so both runs are fed the same per-step noise."""
    from diffusers import LCMScheduler
    from fewstep.core.noise import SampleNoise

    folder = with_scheduler(base["epsilon"], tmp_path, "LCMScheduler", timestep_scaling=0.05)  # c_skip visible
    model = load_model(folder)
    sigmas = make_schedule("scheduler", 3, model.denoiser.sigma_range)
    sched = LCMScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(3)
    cond = model.encode_prompts(PROMPTS)
    x = initial_latents(model.denoiser, 0, [0, 1], model.info.shape, sigmas[0])
    ours = SAMPLERS["consistency"].fn(model.denoiser, x, sigmas, cond, SampleNoise(0, [0, 1], stream=1))
    latents, gen = x / (1 + sigmas[0] ** 2).sqrt(), SampleNoise(0, [0, 1], stream=1)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model.network(latents, t, encoder_hidden_states=cond.text).sample
            latents = sched.step(eps, t, latents, generator=gen.generators).prev_sample
    assert (ours - latents).abs().max() < 1e-4


@pytest.mark.parametrize("settings, message", [
    ({"clip_sample": True}, "clip_sample=True is not supported"),
    ({"thresholding": True}, "thresholding=True is not supported"),
    ({"timestep_type": "continuous"}, "timestep_type='continuous' is not supported"),
    ({"interpolation_type": "log_linear"}, "interpolation_type='log_linear' is not supported"),
    ({"rescale_betas_zero_snr": True}, "use v_prediction"),
])
def test_unsupported_scheduler_settings_are_refused(base, tmp_path, settings, message):
    name = "EulerDiscreteScheduler" if set(settings) & {"timestep_type", "interpolation_type"} else "DDIMScheduler"
    folder = with_scheduler(base["epsilon"], tmp_path, name, **settings)
    with pytest.raises(UserError, match=message) as e:
        load_model(folder)
    assert "\n" not in str(e.value)


def test_unknown_scheduler_setting_and_class_are_refused(base, tmp_path):
    folder = with_scheduler(base["epsilon"], tmp_path, "DDIMScheduler")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "noise_offset": 0.1}))  # a setting from a newer diffusers, say
    with pytest.raises(UserError, match="setting noise_offset=0.1 is not one fewstep reads"):
        load_model(folder)
    path.write_text(json.dumps({**config, "_class_name": "FlowMatchEulerDiscreteScheduler"}))
    with pytest.raises(UserError, match="FlowMatchEulerDiscreteScheduler' is not one fewstep reads"):
        load_model(folder)


def test_zero_terminal_snr_is_honoured_with_v_prediction(base, tmp_path):
    folder = with_scheduler(base["v_prediction"], tmp_path, "EulerDiscreteScheduler", "v_prediction",
                            rescale_betas_zero_snr=True, timestep_spacing="trailing")
    model = load_model(folder)
    assert model.denoiser.sigma_range.sigma_max == pytest.approx(4096, rel=1e-4)  # alpha_bar_T = 2^-24
    _, x, _, ours = fewstep_images(folder, 4, 2.0)
    ref = diffusers_images(StableDiffusionPipeline.from_pretrained(folder, local_files_only=True), x, 4, 2.0)
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("part", ["text_encoder", "tokenizer", "vae", "scheduler"])
def test_missing_component_is_named(base, tmp_path, part):
    folder = tmp_path / "sd"
    shutil.copytree(base["epsilon"], folder)
    shutil.rmtree(folder / part)
    with pytest.raises(UserError, match=f"the pipeline's {part}/ component is missing"):
        load_model(folder)


def test_pickle_only_weights_are_refused(base, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(base["epsilon"], folder)
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    shutil.rmtree(folder / "text_encoder")
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=False)
    if any((folder / "text_encoder").glob("*.safetensors")):  # transformers >= 5 always writes safetensors
        for f in (folder / "text_encoder").glob("*.safetensors"):
            torch.save({}, f.with_suffix(".bin"))
            f.unlink()
    with pytest.raises(UserError, match="only pickle weights .*safetensors"):
        load_model(folder)


def test_unsupported_pipelines_are_refused(base, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(base["epsilon"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(UserError, match="KandinskyV22Pipeline is not supported"):
        load_model(folder)
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "time_cond_proj_dim": 32}))
    with pytest.raises(UserError, match="time_cond_proj_dim=32 needs a guidance-scale embedding"):
        load_model(folder)


def test_conditions_of_the_wrong_kind_are_refused(base, tmp_path):
    model = load_model(base["epsilon"])
    x, sigma = torch.randn(2, 4, 8, 8), torch.full((2,), 1.0)
    with pytest.raises(UserError, match="conditioned on text prompts, but class labels was given"):
        model.denoiser(x, sigma, torch.tensor([0, 1]))
    with pytest.raises(UserError, match="conditioned on text prompts, but no prompt was given"):
        model.denoiser(x, sigma, None)
    from tests.test_diffusers_adapter import save_pipeline

    save_pipeline(tmp_path / "pixels")
    pixels = load_model(tmp_path / "pixels")
    with pytest.raises(UserError, match="a prompt was given, but this model has no text encoder"):
        pixels.encode_prompts(["a cat"])
    with pytest.raises(UserError, match="a prompt was given, but this model has no text encoder"):
        pixels.denoiser(torch.randn(1, 3, 8, 8), torch.ones(1), model.encode_prompts(["a cat"]))
    assert torch.equal(pixels.decode(x), x)  # pixel models decode to themselves


def test_prompts_are_encoded_once_without_gradients_and_latents_round_trip(base):
    model = load_model(base["epsilon"])
    cond = model.encode_prompts(PROMPTS, negative=["a blue car", ""])
    assert isinstance(cond, Cond) and cond.text.shape == (2, 77, 32) and not cond.text.requires_grad
    empty = model.encode_prompts(["", "a blue car"])
    assert torch.equal(cond.negative.text[1], empty.text[0]) and torch.equal(cond.negative.text[0], empty.text[1])
    assert torch.equal(cond.negative.text[1], empty.negative.text[0])  # default null = the empty prompt
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    images = model.decode(torch.randn(2, 4, 8, 8))
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    pipe = StableDiffusionPipeline.from_pretrained(base["epsilon"], local_files_only=True)
    z = pipe.vae.encode(images).latent_dist.mode() * pipe.vae.config.scaling_factor
    assert torch.allclose(model.encode(images), z)


def test_prompts_longer_than_the_encoder_are_cut_as_diffusers_cuts_them_and_said_once(base, caplog):
    from fewstep.models import text

    text._CUT_NOTED.clear()
    model = load_model(base["epsilon"])
    long = " ".join(["a small red cat"] * 30)  # 121 tokens
    with caplog.at_level("WARNING", logger="fewstep.models.text"):
        cond = model.encode_prompts([long, "a cat"])
        model.encode_prompts([long])
    notes = [r.getMessage() for r in caplog.records if "are cut" in r.getMessage()]
    assert notes == ["note: 1 of 2 prompts are longer than the text encoder's 77 tokens and are cut there, as "
                     "diffusers' pipelines cut them"]
    pipe = StableDiffusionPipeline.from_pretrained(base["epsilon"], local_files_only=True)
    reference, _ = pipe.encode_prompt([long, "a cat"], "cpu", 1, False)
    assert torch.allclose(cond.text, reference, atol=1e-6)


def test_clip_tokenizer_from_words(tmp_path):
    tokenizer = build_clip_tokenizer(["Zebra", "striped", "zebra"], tmp_path / "tok")
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {"vocab.json", "merges.txt"}
    ids = tokenizer("a striped zebra!").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[2:4]) == ["striped</w>", "zebra</w>"]  # each word one token
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a striped zebra !"
    assert tokenizer("ünknown wörds 42").input_ids[-1] == tokenizer.eos_token_id  # anything else: byte by byte
    assert tokenizer.model_max_length == 77


def test_every_listed_word_is_one_token(tmp_path):
    """Merges of one word may break another's chain ("right" before "triangle", repeats as in "ccccg"); the builder
    must still give each listed word one token, in the slow and the fast tokenizer alike."""
    import random

    from transformers import CLIPTokenizerFast

    from fewstep.data.captions import COLOURS, REGION_WORDS, SHAPES, SIZES

    rng = random.Random(0)
    captions_words = {w for ws in (SHAPES, COLOURS, SIZES, *REGION_WORDS.values(), "a left right of above below")
                      for w in (ws.split() if isinstance(ws, str) else ws)}
    for i, words in enumerate([sorted(captions_words), ["right", "triangle", "ccccg", "cc"],
                               ["".join(rng.choice("abc") for _ in range(rng.randint(1, 12))) for _ in range(300)]]):
        slow = build_clip_tokenizer(words, tmp_path / str(i))
        fast = CLIPTokenizerFast.from_pretrained(tmp_path / str(i))
        assert [w for w in words if len(slow.tokenize(w)) != 1] == []
        assert all(slow(w).input_ids == fast(w).input_ids for w in words)


@pytest.mark.parametrize("name, settings", [
    ("EulerDiscreteScheduler", {}), ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("HeunDiscreteScheduler", {}), ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}), ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}),
])
def test_the_network_is_called_at_the_schedulers_own_timesteps(name, settings):
    """Between trained timesteps each scheduler maps sigma to t its own way (log or linear interpolation, rounding);
    the adapter inverts exactly the map of the scheduler its folder ships with."""
    from fewstep.models.diffusers_adapter import DiffusersVPDenoiser
    from fewstep.models.schedulers import read_scheduler, scheduler_sigmas
    from fewstep.models.tiny import tiny_unet

    read = read_scheduler({**tiny_scheduler(name, **settings).config, "_class_name": name}, "test")
    denoiser = DiffusersVPDenoiser(tiny_unet(32), read.alphas_cumprod, timestep_map=read.timestep_map)
    sigmas = scheduler_sigmas(read, 8)
    timesteps = torch.unique_consecutive(read.scheduler.timesteps.float())
    # diffusers interpolates in float32: 1e-4 apart; the wrong map (log for linear) is 5e-4 off
    torch.testing.assert_close(denoiser.sigma_to_t(sigmas[:-1]), timesteps, atol=2e-4, rtol=0)


def test_generate_with_prompts_is_independent_of_the_batch_size(base):
    """The integrator's path: generate() selects each batch's rows of the Cond (and of its negative)."""
    from fewstep.samplers import generate

    model = load_model(base["epsilon"])
    cond = model.encode_prompts(PROMPTS + ["a green house"], negative="a blue car")
    sigmas = make_schedule("scheduler", 3, model.denoiser.sigma_range)
    guided = CFGDenoiser(model.denoiser, 3.0)
    whole = generate(guided, model.info.shape, 3, sigmas, "ddim", seed=1, labels=cond)
    split = generate(guided, model.info.shape, 3, sigmas, "ddim", seed=1, labels=cond, batch_size=2)
    assert whole.nfe == 3 and whole.samples.shape == (3, 4, 8, 8)
    torch.testing.assert_close(split.samples, whole.samples, rtol=1e-4, atol=1e-4)


def test_a_pipeline_folder_with_a_fewstep_record_keeps_its_encoders(base, tmp_path):
    """A student saved as a pipeline folder plus fewstep.json: its recorded sampling, the folder's prompt encoder."""
    from dataclasses import asdict

    folder = tmp_path / "student"
    shutil.copytree(base["epsilon"], folder)
    info = load_model(folder).info
    (folder / "fewstep.json").write_text(json.dumps({**asdict(info), "sampler": {"name": "euler", "steps": 4,
                                                                               "schedule": "scheduler"}}))
    model = load_model(folder)
    assert model.info.sampler["name"] == "euler" and model.info.image_shape == [3, 16, 16]
    assert model.encode_prompts(PROMPTS).text.shape == (2, 77, 32) and model.decode(torch.zeros(1, 4, 8, 8)).shape[1] == 3
