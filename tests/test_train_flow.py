"""The flow-matching objective: velocity regression through D, SD3's time sampling, and a trained fewstep network that
plain diffusers samples with FlowMatchEulerDiscreteScheduler exactly as fewstep does."""

import math

import pytest
import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler, UNet2DModel

from fewstep.core.errors import UserError
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.data import load_dataset
from fewstep.data.batches import Batch, TensorSource
from fewstep.models import ModelInfo, load_model, save_model
from fewstep.models.flow import default_sampling, flow_denoiser
from fewstep.models.networks import arch_of, build_network
from fewstep.samplers import generate
from fewstep.train.flow import T_EPS, FlowMatchingTraining, flow_t
from fewstep.train.loop import run_loop
from tests.conftest import tiny_config


def batch(x: torch.Tensor, cond=None, seed: int = 3) -> Batch:
    return Batch(x, cond, 0, torch.Generator().manual_seed(seed), slice(0, len(x)), len(x))


def test_loss_is_the_velocity_error():
    """losses() through D equals mean ||v_pred - (n - y)||^2 with the network fed x_t = (1-t) y + t n and t * 1000."""
    torch.manual_seed(0)
    net = build_network("unet", "tiny", (1, 8, 8), 10).eval()
    y, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    method = FlowMatchingTraining(flow_denoiser(net, num_classes=10), "uniform", label_dropout=0.5)
    loss = method.losses(batch(y, labels))["model"]
    b = batch(y, labels)  # the same draws, in the same order: t, noise, dropout
    t, n = flow_t(b, "uniform").reshape(-1, 1, 1, 1), b.randn(1, 8, 8)
    dropped = torch.where(b.rand() < 0.5, 10, labels)
    v = net((1 - t) * y + t * n, t.flatten() * 1000, class_labels=dropped).sample
    assert torch.allclose(loss, ((v - (n - y)) ** 2).mean(), rtol=1e-4)


def test_time_sampling():
    b = batch(torch.zeros(200_000, 1))
    t = flow_t(b, "logit_normal")
    logit = (t / (1 - t)).log()
    assert abs(logit.mean()) < 0.01 and abs(logit.std() - 1) < 0.01  # SD3's logit-normal(0, 1)
    u = flow_t(b, "uniform")
    assert abs(u.mean() - 0.5) < 0.005 and u.min() >= T_EPS and u.max() <= 1 - T_EPS
    with pytest.raises(UserError, match="time sampling"):
        FlowMatchingTraining(flow_denoiser(torch.nn.Identity()), "cosine")


def diffusers_sample(folder, arch: str, noise: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Plain diffusers: the saved network, the saved FlowMatchEulerDiscreteScheduler, a textbook loop."""
    net = (UNet2DModel if arch == "unet" else DiTTransformer2DModel).from_pretrained(folder).eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder)
    sched.set_timesteps(steps)
    x = noise
    with torch.no_grad():
        for t in sched.timesteps:
            v = net(x, t.expand(len(x)), class_labels=labels).sample
            x = sched.step(v, t, x).prev_sample
    return x


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_trained_flow_network_samples_unchanged_in_diffusers(tmp_path, arch):
    """A few flow-matching steps of a tiny class-conditional network through the shared loop, saved as the teacher
    hook saves it (fewstep.json + a FlowMatchEulerDiscreteScheduler config): diffusers' loop = fewstep's Euler."""
    data = load_dataset("digits")
    cfg = tiny_config(arch=arch, steps=10, checkpoint_every=10)
    torch.manual_seed(cfg.seed)
    net = build_network(arch, "tiny", data.shape, data.num_classes)
    method = FlowMatchingTraining(flow_denoiser(net, data.num_classes, data.sigma_data), "logit_normal")
    ema = run_loop(method, TensorSource(data.train, data.train_labels, cfg.seed), cfg.loop(), tmp_path)["model"]
    scheduler_config = ema.schedule.to_config()
    info = ModelInfo(arch=arch_of(ema.network), network_class=type(ema.network).__name__, parameterization="flow",
                     sigma_data=ema.sigma_data, sigma_min=ema.sigma_range.sigma_min,
                     sigma_max=ema.sigma_range.sigma_max, num_classes=ema.num_classes, dataset="digits",
                     shape=list(data.shape), sampler=default_sampling(scheduler_config))
    folder = save_model(tmp_path / "model", ema.network, info, scheduler_config)
    model = load_model(folder)
    rec, labels = model.info.sampler, torch.tensor([1, 7])
    sigmas = make_schedule(rec["schedule"], rec["steps"], model.denoiser.sigma_range)
    ours = generate(model.denoiser, data.shape, 2, sigmas, rec["name"], seed=0, labels=labels).samples
    ref = diffusers_sample(folder, arch, SampleNoise(0, range(2)).randn(data.shape), labels, rec["steps"])
    assert math.isfinite(ours.abs().max().item())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_cli_trains_a_flow_teacher_that_diffusers_samples(tmp_path):
    """`fewstep train --objective flow` end to end: the exported folder records the flow parameterisation and its
    scheduler, and plain diffusers samples it as fewstep does."""
    from fewstep.cli import main

    assert main(["train", "--dataset", "digits", "--arch", "dit", "--objective", "flow", "--preset", "tiny",
                 "--flow-shift", "2", "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run")
    assert model.info.parameterization == "flow" and model.denoiser.schedule.to_config()["shift"] == 2
    rec, labels = model.info.sampler, torch.tensor([3, 5])
    sigmas = make_schedule(rec["schedule"], rec["steps"], model.denoiser.sigma_range)
    ours = generate(model.denoiser, model.info.shape, 2, sigmas, rec["name"], seed=0, labels=labels).samples
    ref = diffusers_sample(tmp_path / "run" / "model", "dit", SampleNoise(0, range(2)).randn(model.info.shape), labels,
                           rec["steps"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
