"""The diffusers adapter: fewstep's DDIM on a user's UNet2DModel folder equals diffusers' own pipeline."""

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel

from fewstep.core.errors import UserError
from fewstep.core.schedules import discrete_uniform
from fewstep.models import load_model
from fewstep.samplers import SAMPLERS


def tiny_unet(num_class_embeds=None) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                       num_class_embeds=num_class_embeds)


def save_pipeline(tmp_path, prediction_type="epsilon", layout="pipeline"):
    unet = tiny_unet()
    sched = DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    if layout == "pipeline":
        DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    else:  # a bare UNet folder with the scheduler config beside it
        unet.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    return unet, sched


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers_pipeline(tmp_path, prediction_type):
    unet, sched = save_pipeline(tmp_path, prediction_type)
    steps, seed = 10, 0
    pipe = DDIMPipeline.from_pretrained(tmp_path)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    # diffusers' reference loop (the pipeline's, before its final clamp), from the same noise
    pipe.scheduler.set_timesteps(steps)
    x_ref = noise.clone()
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x_ref = pipe.scheduler.step(pipe.unet(x_ref, t).sample, t, x_ref, eta=0.0).prev_sample
        ref_images = pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                          eta=0.0, output_type="np").images
    model = load_model(tmp_path)
    sigmas = discrete_uniform(steps, model.denoiser.sigma_range.discrete)
    x = noise * model.denoiser.init_noise_scale(sigmas[0])
    out = SAMPLERS["ddim"].fn(model.denoiser, x, sigmas)
    assert (out - x_ref).abs().max() < 1e-4
    ours = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref_images).max() < 1e-4


def test_bare_unet_folder_and_timestep_conversion(tmp_path):
    save_pipeline(tmp_path, layout="bare")
    model = load_model(tmp_path)
    d = model.denoiser
    sched = DDPMScheduler(num_train_timesteps=1000)
    table = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod).sqrt()
    t = torch.tensor([0, 1, 500, 999])
    assert torch.equal(d.sigma_to_t(table[t]), t.float())  # trained sigmas map to their exact integer timestep
    mid = (table[10].double().log() / 2 + table[11].double().log() / 2).exp()
    assert abs(d.sigma_to_t(mid.reshape(1)).item() - 10.5) < 1e-3
    assert d.sigma_range.is_discrete and abs(d.sigma_range.sigma_max - table[-1].item()) < 1e-3


def test_refuses_pickle_weights(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path, safe_serialization=False)
    DDIMScheduler().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="pickle"):
        load_model(tmp_path)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        load_model(tmp_path)
