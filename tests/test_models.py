"""Networks behind EDM preconditioning: every backbone saves, loads and runs, and runs in diffusers too."""

import pytest
import torch

from fewstep.core.precond import EDMPrecond
from fewstep.core.schedules import karras
from fewstep.models import ModelInfo, build_network, call_network, load_model, save_model
from fewstep.samplers import SAMPLERS


@pytest.mark.parametrize("arch,shape,classes", [("unet", (1, 8, 8), 10), ("unet", (3, 8, 8), 0),
                                                ("dit", (1, 8, 8), 10), ("dit", (3, 8, 8), 0), ("mlp", (2,), 0),
                                                ("mlp", (2,), 4)])
def test_save_load_round_trip(tmp_path, arch, shape, classes):
    torch.manual_seed(0)
    net = build_network(arch, "tiny", shape, classes)
    d = EDMPrecond(net, call_network, 0.5, num_classes=classes).eval()
    save_model(tmp_path, net, ModelInfo(arch=arch, network_class=type(net).__name__, num_classes=classes,
                                        shape=list(shape)))
    loaded = load_model(tmp_path)
    x, sigma = torch.randn(4, *shape), torch.tensor([0.01, 0.5, 3.0, 80.0])
    labels = torch.tensor([0, 1, 2, 3]) if classes else None
    with torch.no_grad():
        assert torch.equal(d(x, sigma, labels), loaded.denoiser(x, sigma, labels))
        assert d(x, sigma).shape == x.shape
    assert not any(p.requires_grad for p in loaded.denoiser.parameters())


def test_preconditioning_limits():
    net = build_network("mlp", "tiny", (2,), 0)
    d = EDMPrecond(net, call_network, 0.5).eval()
    x = torch.randn(3, 2)
    with torch.no_grad():  # as sigma -> 0 the denoiser returns its input (c_skip -> 1, c_out -> 0)
        assert torch.allclose(d(x, torch.full((3,), 1e-6)), x, atol=1e-5)


def test_fewstep_model_runs_in_diffusers(tmp_path):
    """A saved teacher loads as UNet2DModel + EDMEulerScheduler, and diffusers' Euler loop equals fewstep's."""
    from diffusers import EDMEulerScheduler, UNet2DModel

    torch.manual_seed(0)
    net = build_network("unet", "tiny", (1, 8, 8), 0)
    save_model(tmp_path, net, ModelInfo(arch="unet", network_class="UNet2DModel", sigma_data=0.5, shape=[1, 8, 8]))
    unet = UNet2DModel.from_pretrained(tmp_path, use_safetensors=True)
    sched = EDMEulerScheduler.from_pretrained(tmp_path)
    sched.set_timesteps(6)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    ours = SAMPLERS["euler"].fn(load_model(tmp_path).denoiser, noise * sched.sigmas[0], sched.sigmas)
    assert (ours - x).abs().max() < 1e-4
    assert torch.allclose(sched.sigmas[:-1], karras(6, 0.002, 80.0)[:-1], rtol=1e-5)
