"""fewstep's samplers against diffusers' schedulers, from the same noise, on a random tiny UNet2DModel folder.

The folder is read back through fewstep.models.load_model, so the diffusers adapter (VP <-> EDM coordinates,
sigma -> timestep) is part of every comparison. Each scheduler is configured so that its math is the sampler's
exactly; what is left is float32 rounding (see `assert_agree`).
"""

import pytest
import torch
from diffusers import (DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import discrete_uniform
from fewstep.models import load_model
from fewstep.samplers import SAMPLERS
from tests.test_diffusers_adapter import tiny_unet

PREDICTIONS = ["epsilon", "v_prediction"]


def assert_agree(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Max abs difference within 1e-6 of the samples' magnitude (at least 1), i.e. a few float32 ulps.

    v-prediction keeps a random UNet's samples O(1) and they agree to ~2e-6 absolute. A random epsilon-UNet's samples
    reach |x| ~ 600 (x0 = x - sigma eps at sigma ~ 157, eps uncorrelated with the noise), where one float32 ulp is
    6e-5: both implementations then differ by ~2e-4 from a float64 run, and from each other by as much.
    """
    assert (out - ref).abs().max() <= 1e-6 * max(ref.abs().max().item(), 1.0)


def model_folder(tmp_path, scheduler):
    """Save a random tiny UNet beside `scheduler`'s config and load the folder as a fewstep denoiser."""
    unet = tiny_unet()
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)
    return unet, load_model(tmp_path).denoiser


def diffusers_loop(unet, scheduler, x: torch.Tensor, generator=None) -> torch.Tensor:
    """diffusers' sampling loop (as in its pipelines) from latent x."""
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_output = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(model_output, t, x, generator=generator).prev_sample
    return x


def noise() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("karras_sigmas", [False, True])
def test_euler_matches_euler_discrete_scheduler(tmp_path, karras_sigmas, prediction_type):
    """Leading spacing gives integer timesteps (the default linspace spacing interpolates sigma linearly in t, which
    no sigma -> t map inverts); Karras sigmas exercise the adapter's log-linear sigma -> t, the same as diffusers'."""
    sched = EulerDiscreteScheduler(timestep_spacing="leading", use_karras_sigmas=karras_sigmas,
                                   prediction_type=prediction_type)
    unet, denoiser = model_folder(tmp_path, sched)
    sched.set_timesteps(10)
    assert torch.allclose(denoiser.init_noise_scale(sched.sigmas[0]), torch.as_tensor(sched.init_noise_sigma))
    ref = diffusers_loop(unet, sched, noise() * sched.init_noise_sigma)
    out = SAMPLERS["euler"].fn(denoiser, noise() * denoiser.init_noise_scale(sched.sigmas[0]), sched.sigmas)
    assert_agree(out, ref)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("order, steps", [(2, 10), (3, 15)])
def test_dpmpp_matches_dpm_solver_multistep(tmp_path, order, steps, prediction_type):
    """DPM-Solver++ with the midpoint 2nd-order term and final_sigmas_type="zero" (the last step is first order, as
    in fewstep); 15 steps for order 3 because below 15 lower_order_final also drops the second-to-last step to
    order 2. The scheduler steps the unit-variance VP latent; both end in data space at sigma = 0."""
    sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=order, solver_type="midpoint",
                                        lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
                                        timestep_spacing="linspace", use_karras_sigmas=False, thresholding=False,
                                        prediction_type=prediction_type)
    unet, denoiser = model_folder(tmp_path, sched)
    sched.set_timesteps(steps)
    ref = diffusers_loop(unet, sched, noise() * sched.init_noise_sigma)
    out = SAMPLERS[f"dpmpp_{order}m"].fn(denoiser, noise() * denoiser.init_noise_scale(sched.sigmas[0]), sched.sigmas)
    assert_agree(out, ref)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_matches_ddpm_scheduler(tmp_path, prediction_type):
    """Ancestral DDPM with variance beta-tilde ("fixed_small"), fed the same per-sample generators: diffusers draws
    noise on every step but the last, exactly where sigma_next > 0 in fewstep."""
    sched = DDPMScheduler(variance_type="fixed_small", clip_sample=False, timestep_spacing="leading",
                          prediction_type=prediction_type)
    unet, denoiser = model_folder(tmp_path, sched)
    sched.set_timesteps(10)
    sigmas = discrete_uniform(10, denoiser.sigma_range.discrete, "leading")
    ref = diffusers_loop(unet, sched, noise(), SampleNoise(0, [0, 1], stream=1).generators)
    x = noise() * denoiser.init_noise_scale(sigmas[0])
    assert_agree(SAMPLERS["ddpm"].fn(denoiser, x, sigmas, None, SampleNoise(0, [0, 1], stream=1)), ref)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_euler_ancestral_matches_diffusers(tmp_path, prediction_type):
    """eta = 1 is diffusers' EulerAncestralDiscreteScheduler; its extra draw on the last step (times sigma_up = 0)
    comes after all the others, so the per-sample noise streams stay aligned."""
    ddpm = DDPMScheduler(prediction_type=prediction_type)  # fewstep's loader reads DDPM-family scheduler configs
    unet, denoiser = model_folder(tmp_path, ddpm)
    sched = EulerAncestralDiscreteScheduler.from_config(ddpm.config, timestep_spacing="leading")
    sched.set_timesteps(10)
    ref = diffusers_loop(unet, sched, noise() * sched.init_noise_sigma, SampleNoise(0, [0, 1], stream=1).generators)
    x = noise() * denoiser.init_noise_scale(sched.sigmas[0])
    out = SAMPLERS["euler_ancestral"].fn(denoiser, x, sched.sigmas, None, SampleNoise(0, [0, 1], stream=1))
    assert_agree(out, ref)
