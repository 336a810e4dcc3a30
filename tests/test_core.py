"""Core: seeded per-sample noise, the counting wrapper, schedules' contract."""

import torch

from fewstep.core.denoiser import CallableDenoiser, CountingDenoiser
from fewstep.core.noise import SampleNoise
from fewstep.samplers import generate


def test_noise_is_per_sample_and_batch_independent():
    all_at_once = SampleNoise(7, range(6)).randn((3, 4))
    one_by_one = torch.cat([SampleNoise(7, [i]).randn((3, 4)) for i in range(6)])
    assert torch.equal(all_at_once, one_by_one)
    assert not torch.equal(SampleNoise(8, [0]).randn((3,)), SampleNoise(7, [0]).randn((3,)))
    assert not torch.equal(SampleNoise(7, [0], stream=1).randn((3,)), SampleNoise(7, [0]).randn((3,)))


def test_generate_is_independent_of_batch_size_and_counts_nfe():
    d = CallableDenoiser(lambda x, s, c: x / (1 + s[:, None] ** 2))  # posterior mean of y ~ N(0, 1)
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0])
    a = generate(d, (2,), 10, sigmas, "heun", seed=1, batch_size=10)
    b = generate(d, (2,), 10, sigmas, "heun", seed=1, batch_size=3)
    assert torch.allclose(a.samples, b.samples, atol=1e-6) and a.nfe == b.nfe == 7


def test_counting_denoiser_counts_calls_and_rows():
    counter = CountingDenoiser(CallableDenoiser(lambda x, s, c: x))
    counter(torch.zeros(5, 2), torch.ones(5))
    counter(torch.zeros(10, 2), torch.ones(10))
    assert counter.nfe == 2 and counter.sample_evals == 15 and counter.sigma_data == 0.5


def test_consistency_boundary_is_the_identity_at_sigma_min_and_d_far_from_it():
    from fewstep.core.precond import ConsistencyBoundary

    inner = CallableDenoiser(lambda x, sigma, cond: torch.zeros_like(x))
    f = ConsistencyBoundary(inner, 0.002, scale=10.0)
    x = torch.randn(3, 2)
    assert torch.equal(f(x, torch.full((3,), 0.002)), x)  # c_skip = 1 exactly: the boundary condition
    assert f(x, torch.full((3,), 10.0)).abs().max() < 1e-4 * x.abs().max()  # c_skip -> 0: f = D
