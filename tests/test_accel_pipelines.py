"""U-Net feature caches on a Stable-Diffusion pipeline's UNet2DConditionModel: DeepCache equals the DeepCache
package's DeepCacheSDHelper on StableDiffusion(XL)Pipeline, interval 1 is exact, remove() restores the network."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from fewstep.accel import apply_cache
from fewstep.core.schedules import make_schedule
from fewstep.metrics import count_flops
from fewstep.models import load_model
from fewstep.models.tiny import save_tiny_pipeline
from fewstep.samplers import SAMPLERS, CFGDenoiser, initial_latents

PROMPTS = ["a red cat", "a photo of a small dog on a tree"]
STEPS, CFG_SCALE = 8, 4.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Stable Diffusion's layout with its two layers per block (DeepCache's cache_branch_id assumes at most 2)."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd") / "sd", "DDIMScheduler", layers_per_block=2,
                              set_alpha_to_one=True)


def sample(model, cond, x):
    """fewstep's guided DDIM on the folder's own schedule, decoded."""
    sigmas = make_schedule("scheduler", STEPS, model.denoiser.sigma_range)
    return model.decode(SAMPLERS["ddim"].fn(CFGDenoiser(model.denoiser, CFG_SCALE), x, sigmas, cond))


def start(model):
    sigmas = make_schedule("scheduler", STEPS, model.denoiser.sigma_range)
    return initial_latents(model.denoiser, 0, range(len(PROMPTS)), model.info.shape, sigmas[0]), sigmas[0]


def deepcache_pipeline(pipe, x, sigma0, branch_id: int) -> torch.Tensor:
    """The DeepCache package's own helper on diffusers' pipeline, from fewstep's initial latents (DDIM: VP latents)."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=3, cache_branch_id=branch_id)
    helper.enable()
    try:
        with torch.no_grad():
            images = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=CFG_SCALE, output_type="pt",
                          latents=x / (1 + sigma0**2).sqrt()).images
    finally:
        helper.disable()
    return images * 2 - 1


@pytest.mark.parametrize("branch_id", [0, 1, 2, 3, 5])
def test_deepcache_equals_deepcache_sd_helper(folder, branch_id):
    """cache_branch_id = 3 branch + layer: layer 0 runs only conv_in and the last up layer; layer 2 (= layers per
    block) is fewstep's default, the whole block; branch 1 layer 2 skips only the mid block."""
    pytest.importorskip("DeepCache")
    model = load_model(folder)
    cond = model.encode_prompts(PROMPTS)
    x, sigma0 = start(model)
    plain = sample(model, cond, x)
    handle = apply_cache(model, f"deepcache:interval=3,branch={branch_id // 3},layer={branch_id % 3}")
    ours = sample(model, cond, x)
    assert handle.stats() == {"full_calls": 3, "cached_calls": 5}  # calls 0, 3, 6 in full, as DeepCache's steps
    handle.remove()
    ref = deepcache_pipeline(StableDiffusionPipeline.from_pretrained(folder, local_files_only=True), x, sigma0,
                             branch_id)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-3  # the cache changed the samples: the comparison means something


def test_deepcache_on_the_sdxl_layout_equals_deepcache_sd_helper(tmp_path):
    """Added conditions (pooled text + time ids) reach the cached calls' embedding as they reach the full ones."""
    pytest.importorskip("DeepCache")
    xl = save_tiny_pipeline(tmp_path / "xl", "DDIMScheduler", sdxl=True, set_alpha_to_one=True)
    model = load_model(xl)
    cond = model.encode_prompts(PROMPTS)
    x, sigma0 = start(model)
    handle = apply_cache(model, "deepcache:interval=3,branch=0,layer=1")
    ours = sample(model, cond, x)
    handle.remove()
    ref = deepcache_pipeline(StableDiffusionXLPipeline.from_pretrained(xl, local_files_only=True), x, sigma0, 1)
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("spec", ["deepcache:interval=1", "deepcache:interval=1,branch=0,layer=0",
                                  "deepcache:interval=1,branch=1,layer=1", "encprop:interval=1"])
def test_interval_one_reproduces_the_text_model_exactly(folder, spec):
    model = load_model(folder)
    cond = model.encode_prompts(PROMPTS)
    x, _ = start(model)
    plain = sample(model, cond, x)
    handle = apply_cache(model, spec)
    assert torch.equal(sample(model, cond, x), plain)
    assert handle.stats() == {"full_calls": STEPS, "cached_calls": 0}


@pytest.mark.parametrize("spec", ["deepcache:interval=2,branch=0,layer=0", "deepcache:interval=2,branch=1",
                                  "encprop:interval=2"])
def test_cached_call_on_the_full_calls_input_equals_it_and_remove_restores(folder, spec):
    """Same input twice: the cached call recombines exactly the features the full call computed, in fewer FLOPs."""
    model = load_model(folder)
    unet = model.network
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    cond = model.encode_prompts(PROMPTS)
    x, sigma = torch.randn(2, 4, 8, 8) * 3, torch.full((2,), 2.0)
    with torch.no_grad():
        full = model.denoiser(x, sigma, cond)
        handle = apply_cache(model, spec)
        first, second = model.denoiser(x, sigma, cond), model.denoiser(x, sigma, cond)
    assert handle.stats() == {"full_calls": 1, "cached_calls": 1}
    assert torch.equal(first, full) and torch.equal(second, full)
    handle.reset()
    full_flops = count_flops(lambda: model.denoiser(x, sigma, cond))
    assert count_flops(lambda: model.denoiser(x, sigma, cond)) < full_flops  # the cached call skips compute
    handle.remove()
    assert all("forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
               for m in unet.modules())
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.denoiser(x, sigma, cond), full)


def test_deepcache_layer_out_of_range_is_refused(folder):
    from fewstep.core.errors import UserError

    model = load_model(folder)
    with pytest.raises(UserError, match=r"layer must lie in 0..2 \(or -1, the whole block\) for branch 0, got 3"):
        apply_cache(model, "deepcache:layer=3")
