"""Flow matching as an EDM denoiser: the exact map, diffusers' flow schedules, and samplers from t = 1 (SIGMA_INF)."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from torch import nn

from fewstep.core.denoiser import SIGMA_INF, SigmaRange
from fewstep.core.errors import UserError
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.models.flow import (FlowMatchDenoiser, default_sampling, flow_denoiser, read_flow_scheduler, sigma_of_t,
                                 t_of_sigma)
from fewstep.samplers import SAMPLERS, generate

FLOW = "FlowMatchEulerDiscreteScheduler"
SHIFTS = [{}, {"shift": 3.0}, {"shift": 0.5, "shift_terminal": 0.02}, {"shift": 3.0, "use_karras_sigmas": True}]


def tiny_velocity_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8).eval()


def latents() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def gaussian_flow(c: float = 0.5, **config) -> FlowMatchDenoiser:
    """The exact velocity of data N(0, c^2): x_t ~ N(0, V), V = (1-t)^2 c^2 + t^2, v = (t - (1-t) c^2) / V * x_t."""
    def velocity(net, x_t, timestep, cond):
        t = timestep.double().reshape(-1, 1, 1, 1) / 1000
        return (t - (1 - t) * c**2) / ((1 - t) ** 2 * c**2 + t**2) * x_t.double()

    return FlowMatchDenoiser(nn.Identity(), velocity, read_flow_scheduler({"_class_name": FLOW, **config}))


def test_map_is_exact_and_t1_is_what_diffusers_feeds():
    """D = x_t - t v with x_t = x / (1 + sigma); at SIGMA_INF the network gets x_t = n bit for bit and timestep 1000."""
    seen = {}

    def record(net, x_t, timestep, cond):
        seen.update(x_t=x_t, timestep=timestep)
        return torch.ones_like(x_t)

    d = FlowMatchDenoiser(nn.Identity(), record, read_flow_scheduler({"_class_name": FLOW}))
    n = latents()
    d(n * d.init_noise_scale(torch.tensor(SIGMA_INF)), torch.tensor(SIGMA_INF))
    assert torch.equal(seen["x_t"], n) and torch.equal(seen["timestep"], torch.full((2,), 1000.0))
    y, sigma = latents() * 0.3, torch.tensor([0.25, 4.0])  # t = 0.2, 0.8
    x = y + sigma.reshape(-1, 1, 1, 1) * n
    out = d(x, sigma)
    t = torch.tensor([0.2, 0.8]).reshape(-1, 1, 1, 1)
    assert torch.allclose(seen["x_t"], (1 - t) * y + t * n, atol=1e-6)
    assert torch.allclose(seen["timestep"], torch.tensor([200.0, 800.0]))
    assert torch.allclose(out, seen["x_t"] - t, atol=1e-6)
    t = torch.tensor([0.0, 0.3, 0.999])
    assert torch.allclose(t_of_sigma(sigma_of_t(t)).float(), t)


@pytest.mark.parametrize("config", [*SHIFTS, {"use_dynamic_shifting": True, "time_shift_type": "linear"},
                                    {"use_dynamic_shifting": True}])
@pytest.mark.parametrize("pipeline_sigmas", [False, True])
def test_default_record_reproduces_the_scheduler_sigmas(config, pipeline_sigmas):
    """The "scheduler" schedule of a flow model is diffusers' set_timesteps as the pipeline calls it (Flux: sigmas)."""
    seq_len = 1024
    schedule = read_flow_scheduler({"_class_name": FLOW, **config}, seq_len, pipeline_sigmas)
    d = FlowMatchDenoiser(nn.Identity(), None, schedule)
    steps = default_sampling(schedule.to_config())["steps"]
    sigmas = make_schedule(default_sampling(schedule.to_config())["schedule"], steps, d.sigma_range)
    ref = FlowMatchEulerDiscreteScheduler(**config)
    mu = schedule.mu if config.get("use_dynamic_shifting") else None
    ref.set_timesteps(steps, sigmas=[1 - i / steps for i in range(steps)] if pipeline_sigmas else None, mu=mu)
    assert sigmas[0] == SIGMA_INF and len(sigmas) == steps + 1 and sigmas[-1] == 0
    assert torch.allclose(t_of_sigma(sigmas).float(), ref.sigmas, rtol=1e-6, atol=1e-7)


def diffusers_flow_loop(unet, scheduler, x: torch.Tensor, timesteps_of=lambda s, t: t) -> torch.Tensor:
    """diffusers' flow loop: v = unet(x_t, timestep), then scheduler.step."""
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(unet(x, timesteps_of(scheduler.sigmas[i], t)).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("config", SHIFTS)
def test_euler_equals_flow_match_euler_scheduler(config):
    """fewstep's Euler in sigma from SIGMA_INF = diffusers' FlowMatchEulerDiscreteScheduler loop from t = 1."""
    unet, steps = tiny_velocity_unet(), 8
    sched = FlowMatchEulerDiscreteScheduler(**config)
    d = flow_denoiser(unet, scheduler_config={"_class_name": FLOW, **config})
    sched.set_timesteps(steps)
    noise = SampleNoise(0, range(2)).randn((3, 8, 8))  # generate's initial noise for seed 0
    ref = diffusers_flow_loop(unet, sched, noise)
    sigmas = make_schedule("scheduler", steps, d.sigma_range)
    out = generate(d, (3, 8, 8), 2, sigmas, "euler", seed=0)  # a float64 state, float32 samples
    torch.testing.assert_close(out.samples, ref, atol=1e-5, rtol=1e-5)
    assert out.samples.dtype == torch.float32 and out.nfe == steps
    # float32 arithmetic would lose the first step: x = (1 + 2^26) n minus a number as large
    lossy = SAMPLERS["euler"].fn(d, noise * d.init_noise_scale(sigmas[0]).float(), sigmas)
    assert (lossy - ref).abs().max() > 1e-2


def test_dpmpp_2m_equals_flow_dpm_solver():
    """DPM-Solver++(2M) in sigma = diffusers' DPMSolverMultistepScheduler with flow sigmas and flow_prediction.

    That scheduler rounds its timesteps to integers (the network would see int(1000 t) while the update uses t); the
    reference loop feeds the network 1000 t, as the scheduler's own sigmas say, so the solvers are compared exactly.
    """
    unet, steps = tiny_velocity_unet(), 10
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0,
                                        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        final_sigmas_type="zero", lower_order_final=True, euler_at_final=False)
    d = flow_denoiser(unet)
    sched.set_timesteps(steps)
    ref = diffusers_flow_loop(unet, sched, latents(), timesteps_of=lambda s, t: s.float() * 1000)
    sigmas = sigma_of_t(sched.sigmas)
    out = SAMPLERS["dpmpp_2m"].fn(d, latents().double() * d.init_noise_scale(sigmas[0]), sigmas)
    torch.testing.assert_close(out.float(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "dpmpp_3m"])
def test_samplers_take_sigma_inf_as_infinity(sampler):
    """From t = 1 each ODE sampler converges to the exact flow of Gaussian data, and any stand-in >= SIGMA_INF for
    infinity gives the same samples (Heun's first step is Euler, no multistep history crosses it)."""
    c, n = 0.5, latents()
    d = gaussian_flow(c, shift=3.0)
    errors = []
    for steps in (16, 128):
        sigmas = make_schedule("scheduler", steps, d.sigma_range).double()
        out = SAMPLERS[sampler].fn(d, n.double() * d.init_noise_scale(sigmas[0]), sigmas)
        bigger = sigmas.clone()
        bigger[0] = 2.0**30  # (float64 keeps x = (1 + sigma) x_t to 1e-16 sigma: 1e-7 here)
        same = SAMPLERS[sampler].fn(d, n.double() * d.init_noise_scale(bigger[0]), bigger)
        assert (same - out).abs().max() < 1e-5  # float32 rounding of D
        errors.append((out - c * n).abs().max().item())  # the flow from x_1 = n ends at c n
    assert errors[1] < errors[0] / 3 and errors[1] < 0.05


def test_unsupported_settings_are_one_line_errors():
    for config, match in [({"_class_name": "DDIMScheduler"}, "not a flow-matching"),
                          ({"_class_name": FLOW, "invert_sigmas": True}, "invert_sigmas"),
                          ({"_class_name": FLOW, "shift": 0.0}, "shift must be positive"),
                          ({"_class_name": FLOW, "time_shift_type": "cubic"}, "time_shift_type"),
                          ({"_class_name": FLOW, "use_dynamic_shifting": True}, "image sequence length")]:
        with pytest.raises(UserError, match=match) as e:
            read_flow_scheduler(config)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs a model that ships with a diffusers scheduler"):
        make_schedule("scheduler", 4, SigmaRange(0.01, 10.0))


def test_stochastic_and_heun_schedulers_record_their_samplers():
    assert default_sampling({"_class_name": FLOW})["name"] == "euler"
    assert default_sampling({"_class_name": FLOW, "stochastic_sampling": True})["name"] == "consistency"
    assert default_sampling({"_class_name": "FlowMatchHeunDiscreteScheduler", "shift": 3.0})["name"] == "heun"
