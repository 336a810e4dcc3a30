"""Tiny random diffusers transformers (SD3, Flux, PixArt, DiT) loaded by fewstep sample like their own pipelines.

The pipelines run offline without text encoders: they take prompt embeddings directly (random here), and SD3, Flux
and PixArt return latents (output_type="latent"); DiT's latents are caught on their way into its VAE.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, PixArtAlphaPipeline,
                       PixArtTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline)

from fewstep.core.cond import Cond
from fewstep.core.denoiser import SIGMA_INF
from fewstep.core.errors import UserError
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.models import load_model
from fewstep.models.flow import t_of_sigma
from fewstep.models.transformers import is_transformer_folder
from fewstep.samplers import CFGDenoiser, generate

TEXT_DIM, POOLED_DIM, TOKENS = 16, 8, 5
NO_TEXT_ENCODERS = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)


def tiny_sd3() -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                 caption_projection_dim=16, pooled_projection_dim=POOLED_DIM,
                                 pos_embed_max_size=16).eval()


def tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                  pooled_projection_dim=POOLED_DIM, guidance_embeds=True,
                                  axes_dims_rope=(4, 6, 6)).eval()


def tiny_pixart(sample_size: int) -> PixArtTransformer2DModel:
    """sample_size 128 is PixArt-alpha 1024's: resolution and aspect-ratio micro-conditions (3 heads: width / 3)."""
    torch.manual_seed(0)
    heads = 3 if sample_size == 128 else 2
    return PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=1, cross_attention_dim=8 * heads, caption_channels=TEXT_DIM,
                                    sample_size=sample_size, patch_size=sample_size // 16, norm_num_groups=1).eval()


def prompts(rows: int = 2, seed: int = 1) -> Cond:
    """Random prompt embeddings (T5-like text, CLIP-like pooled, a mask) with random negative prompts."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, TOKENS)
    mask[1:, 3:] = 0

    def one() -> Cond:
        return Cond(text=torch.randn(rows, TOKENS, TEXT_DIM, generator=g),
                    pooled=torch.randn(rows, POOLED_DIM, generator=g), mask=mask)
    return Cond(**{k: v for k, v in one()._tensors().items()}, negative=one())


def noise(shape) -> torch.Tensor:
    """fewstep's initial unit noise of seed 0 (samples 0, 1), handed to the pipelines as their latents."""
    return SampleNoise(0, range(2)).randn(shape)


def sample_default(folder, cond, cfg_scale: float) -> torch.Tensor:
    """fewstep's recorded default sampler and schedule, guided, from the seed-0 noise."""
    model = load_model(folder)
    rec = model.info.sampler
    sigmas = make_schedule(rec["schedule"], rec["steps"], model.denoiser.sigma_range)
    return generate(CFGDenoiser(model.denoiser, cfg_scale), model.info.shape, 2, sigmas, rec["name"], 0, cond).samples


@pytest.mark.parametrize("config", [{"shift": 3.0}, {"use_dynamic_shifting": True}])
@pytest.mark.parametrize("layout", ["pipeline", "bare"])
def test_sd3_equals_its_pipeline(tmp_path, config, layout):
    """28 Euler steps with classifier-free guidance = StableDiffusion3Pipeline, with static or dynamic shift."""
    net, sched = tiny_sd3(), FlowMatchEulerDiscreteScheduler(**config)
    pipe = StableDiffusion3Pipeline(transformer=net, scheduler=sched, vae=None, text_encoder_3=None, tokenizer_3=None,
                                    **NO_TEXT_ENCODERS)
    if layout == "pipeline":
        pipe.save_pretrained(tmp_path)
    else:
        net.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    assert is_transformer_folder(tmp_path)
    c = prompts()
    ref = pipe(prompt_embeds=c.text, pooled_prompt_embeds=c.pooled, negative_prompt_embeds=c.negative.text,
               negative_pooled_prompt_embeds=c.negative.pooled, guidance_scale=2.0, latents=noise((4, 8, 8)),
               output_type="latent").images  # 28 steps by default
    model = load_model(tmp_path)
    assert model.info.parameterization == "flow" and model.info.sampler == {"name": "euler", "schedule": "scheduler",
                                                                            "steps": 28}
    torch.testing.assert_close(sample_default(tmp_path, c, 2.0), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("guidance", [None, 5.0])
def test_flux_equals_its_pipeline(tmp_path, guidance):
    """Flux: packed latents, image ids, its linspace(1, 1/n) sigmas with dynamic shift, the guidance embedding (the
    pipeline's 3.5, or a Cond's added["guidance"]) and true CFG from negative prompts; samplers see [4, H, W]."""
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                            max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(transformer=tiny_flux(), scheduler=sched, vae=None, **NO_TEXT_ENCODERS)
    pipe.save_pretrained(tmp_path)
    c, steps = prompts(), 6
    if guidance is not None:
        c = Cond(**c._tensors(), added={"guidance": torch.full((2,), guidance)}, negative=Cond(
            **c.negative._tensors(), added={"guidance": torch.full((2,), guidance)}))
    x0 = noise((4, 8, 8))
    ref = pipe(prompt_embeds=c.text, pooled_prompt_embeds=c.pooled, negative_prompt_embeds=c.negative.text,
               negative_pooled_prompt_embeds=c.negative.pooled, true_cfg_scale=2.0, guidance_scale=guidance or 3.5,
               num_inference_steps=steps, height=64, width=64, output_type="latent",
               latents=FluxPipeline._pack_latents(x0, 2, 4, 8, 8)).images
    ref = FluxPipeline._unpack_latents(ref, 64, 64, 8)
    model = load_model(tmp_path)
    assert model.info.shape == [4, 128, 128]  # the pipeline's default 1024 px
    # at 64 px (8x8 latents: 16 tokens) the pipeline shifts with mu for 16 tokens: build the schedule for them
    from fewstep.models.flow import read_flow_scheduler

    schedule = read_flow_scheduler(json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text()), 16, True)
    out = generate(CFGDenoiser(model.denoiser, 2.0), (4, 8, 8), 2, schedule.sigmas(steps), "euler", 0, c).samples
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_flux_default_record_is_its_pipelines_schedule(tmp_path):
    """At the default 128x128 latents (4096 tokens) the record's 28 sigmas are FluxPipeline's, mu included."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096)
    tiny_flux().save_pretrained(tmp_path)
    sched.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    rec = model.info.sampler
    sigmas = make_schedule(rec["schedule"], rec["steps"], model.denoiser.sigma_range)
    sched.set_timesteps(28, sigmas=np.linspace(1.0, 1 / 28, 28), mu=calculate_shift(4096, 256, 4096, 0.5, 1.15))
    assert sigmas[0] == SIGMA_INF and torch.allclose(t_of_sigma(sigmas).float(), sched.sigmas, atol=1e-7)


@pytest.mark.parametrize("sample_size", [16, 128])
def test_pixart_equals_its_pipeline(tmp_path, sample_size):
    """PixArt (VP epsilon, learned variance) with T5 embeddings and mask: DDIM + CFG = PixArtAlphaPipeline."""
    pipe = PixArtAlphaPipeline(transformer=tiny_pixart(sample_size), scheduler=DDIMScheduler(clip_sample=False),
                               vae=None, text_encoder=None, tokenizer=None)
    pipe.save_pretrained(tmp_path)
    c = prompts()
    ref = pipe(prompt=None, negative_prompt=None, prompt_embeds=c.text, prompt_attention_mask=c.mask,
               negative_prompt_embeds=c.negative.text, negative_prompt_attention_mask=c.negative.mask,
               guidance_scale=3.0, latents=noise((4, sample_size, sample_size)), use_resolution_binning=False,
               output_type="latent").images  # 20 steps by default
    model = load_model(tmp_path)
    assert model.info.sampler == {"name": "ddim", "schedule": "uniform", "steps": 20}
    torch.testing.assert_close(sample_default(tmp_path, c, 3.0), ref, atol=1e-4, rtol=1e-4)


def test_dit_equals_dit_pipeline(tmp_path, monkeypatch):
    """DiT (class-conditional VP epsilon, learned variance, null class 1000): DDIM + CFG = DiTPipeline."""
    import diffusers.pipelines.dit.pipeline_dit as dit_module

    torch.manual_seed(0)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                norm_num_groups=1).eval()
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), latent_channels=4,
                        up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, layers_per_block=1, sample_size=8)
    pipe = DiTPipeline(transformer=net, vae=vae, scheduler=DDIMScheduler(clip_sample=False))
    pipe.save_pretrained(tmp_path)
    x0, caught, decode = noise((4, 8, 8)), [], pipe.vae.decode
    monkeypatch.setattr(dit_module, "randn_tensor", lambda *a, **k: x0.clone())  # its latents: fewstep's noise
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: caught.append(z.clone()) or decode(z, *a, **k))
    pipe(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=50, output_type="pt")
    ref = caught[0] * vae.config.scaling_factor  # the pipeline's final latents, before it decodes them
    model = load_model(tmp_path)
    assert model.info.num_classes == 1000 and model.info.sampler["steps"] == 50
    torch.testing.assert_close(sample_default(tmp_path, torch.tensor([3, 7]), 4.0), ref, atol=1e-4, rtol=1e-4)


def test_refusals_are_one_line_user_errors(tmp_path):
    def refused(folder, match, cond=None):
        with pytest.raises(UserError, match=match) as e:
            model = load_model(folder)
            model.denoiser(torch.zeros(1, *model.info.shape), torch.ones(1), cond)
        assert "\n" not in str(e.value)

    (tmp_path / "sana").mkdir()
    (tmp_path / "sana" / "config.json").write_text(json.dumps({"_class_name": "SanaTransformer2DModel"}))
    refused(tmp_path / "sana", "not 'SanaTransformer2DModel'")
    for name, sched, match in [
            ("dpm", DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True),
             "prediction_type 'flow_prediction'"),
            ("inverted", FlowMatchEulerDiscreteScheduler(invert_sigmas=True), "invert_sigmas"),
            ("noprompt", FlowMatchEulerDiscreteScheduler(), "text-conditioned")]:
        tiny_sd3().save_pretrained(tmp_path / name)
        sched.save_pretrained(tmp_path / name)
        refused(tmp_path / name, match)
    config = json.loads((tmp_path / "noprompt" / "scheduler_config.json").read_text())
    (tmp_path / "noprompt" / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "NoScheduler"}))
    refused(tmp_path / "noprompt", "neither a flow-matching")


@pytest.mark.parametrize("make", [tiny_sd3, tiny_flux, lambda: tiny_pixart(16)], ids=["sd3", "flux", "pixart"])
def test_default_bench_suite_caches_every_transformer(tmp_path, make):
    """`fewstep bench --teacher FOLDER` without a suite: a transformer teacher gets the first-block cache rows."""
    from fewstep.bench.suite import TRANSFORMER_CACHES, default_suite

    make().save_pretrained(tmp_path)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path)
    assert [a.cache for a in default_suite(tmp_path).accelerators] == list(TRANSFORMER_CACHES)
