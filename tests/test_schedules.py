"""Sigma schedules: Karras and log-linear endpoints, diffusers' timestep spacings, explicit() and make_schedule."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from fewstep.core.denoiser import SigmaRange
from fewstep.core.errors import UserError
from fewstep.core.schedules import discrete_uniform, explicit, karras, loglinear, make_schedule
from fewstep.models.diffusers_adapter import discrete_sigmas


def assert_schedule(sigmas: torch.Tensor, n: int, sigma_min: float, sigma_max: float) -> None:
    """n sigmas from sigma_max down to sigma_min, strictly decreasing, then a final 0."""
    assert sigmas.shape == (n + 1,) and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert math.isclose(sigmas[0], sigma_max, rel_tol=1e-6)
    if n > 1:
        assert math.isclose(sigmas[-2], sigma_min, rel_tol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 18, 256])
def test_karras_endpoints_and_monotonicity(n):
    assert_schedule(karras(n, 0.002, 80.0), n, 0.002, 80.0)


def test_karras_is_uniform_in_sigma_to_the_one_over_rho():
    s = karras(10, 0.002, 80.0, rho=7.0)[:-1].double() ** (1 / 7)  # EDM eq. (5)
    assert torch.allclose(s.diff(), s.diff()[0].expand(9), rtol=1e-4)
    assert torch.allclose(karras(10, 0.1, 10.0, rho=1.0)[:-1], torch.linspace(10.0, 0.1, 10))


@pytest.mark.parametrize("n", [1, 2, 18])
def test_loglinear_endpoints_and_spacing(n):
    s = loglinear(n, 0.002, 80.0)
    assert_schedule(s, n, 0.002, 80.0)
    if n > 2:
        assert torch.allclose(s[:-1].log().diff(), s[:-1].log().diff()[0].expand(n - 1), rtol=1e-4)


@pytest.mark.parametrize("spacing, steps_offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_uniform_equals_diffusers_ddim_timesteps(spacing, steps_offset):
    """Every spacing picks diffusers' DDIMScheduler timesteps; step counts include .5 rounding ties (27, 48)."""
    sched = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    table = discrete_sigmas(sched.alphas_cumprod).float()
    for n in [1, 2, 3, 7, 10, 18, 27, 48, 50, 96, 250, 999]:
        sched.set_timesteps(n)
        expected = torch.cat([table[sched.timesteps], torch.zeros(1)])
        assert torch.equal(discrete_uniform(n, table, spacing, steps_offset), expected), n


def test_make_schedule_uniform_uses_the_model_table():
    table = discrete_sigmas(DDIMScheduler().alphas_cumprod).float()
    rng = SigmaRange(float(table.min()), float(table.max()), discrete=table)
    assert torch.equal(make_schedule("uniform", 10, rng), discrete_uniform(10, table))


def test_make_schedule_clips_to_the_valid_range():
    s = make_schedule("karras", 5, SigmaRange(0.01, 20.0), sigma_min=0.001, sigma_max=100.0)
    assert_schedule(s, 5, 0.01, 20.0)


@pytest.mark.parametrize("name, steps, match", [("karras", 0, "at least 1"), ("cosine", 4, "unknown schedule"),
                                                ("uniform", 4, "discrete-time")])
def test_make_schedule_errors(name, steps, match):
    with pytest.raises(UserError, match=match):
        make_schedule(name, steps, SigmaRange(0.002, 80.0))


def test_discrete_uniform_rejects_unknown_spacing():
    with pytest.raises(UserError, match="spacing"):
        discrete_uniform(4, torch.linspace(0.1, 10, 100), "cosine")


def test_explicit_appends_zero_once():
    assert torch.equal(explicit([80.0, 1.0]), torch.tensor([80.0, 1.0, 0.0]))
    assert torch.equal(explicit([80.0, 1.0, 0.0]), torch.tensor([80.0, 1.0, 0.0]))


@pytest.mark.parametrize("sigmas", [[], [1.0, 2.0], [2.0, 2.0], [1.0, -0.5], [[2.0, 1.0]]])
def test_explicit_rejects_invalid(sigmas):
    with pytest.raises(UserError, match="strictly decreasing"):
        explicit(sigmas)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_karras_trailing_ends_every_step_with_work_and_nests(n):
    """karras_trailing(n) starts at sigma_max, skips sigma_min, and sits at the even points of karras_trailing(2n)."""
    s = make_schedule("karras_trailing", n, SigmaRange(0.002, 80.0))
    assert len(s) == n + 1 and s[0] == pytest.approx(80.0) and s[-1] == 0
    assert (s[:-1] > 0.002 * 1.01).all() or n == 1
    assert torch.allclose(make_schedule("karras_trailing", 2 * n, SigmaRange(0.002, 80.0))[::2], s, rtol=1e-5)
