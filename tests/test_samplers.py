"""Every sampler on an analytic denoiser: convergence order, the sampled law, seeds and batch size, NFE, consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.core.denoiser import CallableDenoiser, CountingDenoiser, SigmaRange
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import karras
from fewstep.samplers import SAMPLERS, generate


class GaussianMixture:
    """The exact denoiser E[y | x, sigma] of an isotropic Gaussian mixture, in float64.

    Label k restricts the prior to component k; label K (= num_classes, the null label) or no cond is the mixture.
    """

    def __init__(self, means: list[list[float]], stds: list[float], weights: list[float]):
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.sigma_range = SigmaRange(0.002, 80.0)
        self.sigma_data = 0.5
        self.num_classes = len(weights)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        assert isinstance(sigma, torch.Tensor) and sigma.shape == (x.shape[0],), "sigma must be a [batch] tensor"
        var = self.stds**2 + sigma.double()[:, None] ** 2  # [batch, K]: x | k ~ N(mu_k, (s_k^2 + sigma^2) I)
        diff = x.double()[:, None, :] - self.means
        logits = self.weights.log() - x.shape[1] / 2 * var.log() - (diff**2).sum(-1) / (2 * var)
        if cond is not None:
            labels = torch.as_tensor(cond).long()[:, None]
            allowed = (labels == torch.arange(self.num_classes)) | (labels == self.num_classes)
            logits = torch.where(allowed, logits, -torch.inf)
        # softmax written out: torch's softmax kernel threads even tiny tensors, slow on a busy 2-core machine
        responsibilities = (logits - logits.amax(-1, keepdim=True)).exp()
        responsibilities = responsibilities / responsibilities.sum(-1, keepdim=True)
        posterior_means = self.means + (self.stds**2 / var)[..., None] * diff  # E[y | x, k]
        return (responsibilities[..., None] * posterior_means).sum(1)

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma_max)

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """sum_k w_k (s_k^2 I + mu_k mu_k^T) - mean mean^T."""
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        within = (self.weights @ self.stds**2) * torch.eye(2, dtype=torch.float64)
        return second + within - self.mean().outer(self.mean())


MIXTURE = GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], [0.25, 0.4, 0.3], [0.5, 0.3, 0.2])


def sigmas(steps: int) -> torch.Tensor:
    return karras(steps, 0.002, 80.0).double()


def start(batch: int = 64) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0


@pytest.fixture(scope="module")
def ode_reference() -> torch.Tensor:
    """The ODE's end points from `start()`, by Heun with 1024 steps (error ~1e-5, far below the errors measured)."""
    return SAMPLERS["heun"].fn(MIXTURE, start(), sigmas(1024))


@pytest.mark.parametrize("name, lo, hi", [("euler", 0.7, 1.3), ("heun", 1.6, 2.8), ("dpmpp_2m", 1.6, 2.8),
                                          ("dpmpp_3m", 2.5, 4.0)])
def test_convergence_order(ode_reference, name, lo, hi):
    """RMS error at 8-64 steps vs the reference falls as steps^-slope: measured slopes are 1.00 (euler), 2.33 (heun),
    2.04 (dpmpp_2m), 3.32 (dpmpp_3m; its order-1 and -2 warm-up steps bring it to 2 beyond ~100 steps)."""
    steps = [8, 16, 32, 64]
    errors = [(SAMPLERS[name].fn(MIXTURE, start(), sigmas(n)) - ode_reference).pow(2).mean().sqrt() for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert lo < slope < hi, f"{name}: slope {slope:.2f}, errors {errors}"


class BatchNoise:
    """One generator for the whole batch, with SampleNoise's randn_like: cheap noise where only the law matters."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


def mixture_errors(samples: torch.Tensor) -> tuple[float, float, float]:
    """Max abs errors of the samples' mean, covariance and component weights (nearest mean) against the mixture."""
    nearest = (samples[:, None, :] - MIXTURE.means).norm(dim=-1).argmin(1)
    weights = torch.bincount(nearest, minlength=3) / len(samples)
    return ((samples.mean(0) - MIXTURE.mean()).abs().max().item(),
            (samples.T.cov() - MIXTURE.covariance()).abs().max().item(),
            (weights - MIXTURE.weights).abs().max().item())


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "consistency"])
def test_samples_follow_the_mixture(name):
    """With 128 steps every sampler draws the mixture: mean, covariance and weights of 2000 samples within 3-4 standard
    errors (0.02, 0.027, 0.011). Consistency sampling returns posterior means, not samples, and is left out."""
    out = SAMPLERS[name].fn(MIXTURE, start(2000), sigmas(128), None, BatchNoise(1))
    mean_error, cov_error, weight_error = mixture_errors(out)
    assert mean_error < 0.06 and cov_error < 0.08 and weight_error < 0.04


def test_few_steps_miss_the_mixture():
    """The check above has teeth: 4 Euler steps miss the covariance and weights by several times its tolerance."""
    _, cov_error, weight_error = mixture_errors(SAMPLERS["euler"].fn(MIXTURE, start(2000), sigmas(4)))
    assert cov_error > 0.3 and weight_error > 0.08


@pytest.mark.parametrize("name", [n for n, spec in SAMPLERS.items() if spec.stochastic])
def test_stochastic_samples_do_not_depend_on_batch_size(name):
    one = generate(MIXTURE, [2], 5, sigmas(6), name, seed=3, batch_size=1).samples
    five = generate(MIXTURE, [2], 5, sigmas(6), name, seed=3, batch_size=5).samples
    other_seed = generate(MIXTURE, [2], 5, sigmas(6), name, seed=4, batch_size=5).samples
    torch.testing.assert_close(one, five)
    assert (other_seed - five).abs().min() > 0


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_noise_comes_only_from_the_generator(name):
    """Deterministic samplers ignore the generator; stochastic ones refuse to run without one and vary with it."""
    x, s = start(4), sigmas(5)
    a = SAMPLERS[name].fn(MIXTURE, x, s, None, SampleNoise(0, range(4), stream=1))
    b = SAMPLERS[name].fn(MIXTURE, x, s, None, SampleNoise(1, range(4), stream=1))
    if SAMPLERS[name].stochastic:
        assert not torch.equal(a, b)
        with pytest.raises(ValueError, match="generator"):
            SAMPLERS[name].fn(MIXTURE, x, s)
    else:
        assert torch.equal(a, b) and torch.equal(a, SAMPLERS[name].fn(MIXTURE, x, s))


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_nfe_matches_the_registry(name, steps):
    """Measured calls equal the registry's nfe(steps), directly and through generate; each call carries the batch."""
    counter = CountingDenoiser(MIXTURE)
    SAMPLERS[name].fn(counter, start(3), sigmas(steps), None, SampleNoise(0, range(3), stream=1))
    assert counter.calls == SAMPLERS[name].nfe(steps)
    assert counter.sample_evals == 3 * SAMPLERS[name].nfe(steps)
    assert generate(MIXTURE, [2], 3, sigmas(steps), name).nfe == SAMPLERS[name].nfe(steps)


def test_edm_stochastic_without_churn_is_heun():
    x, s, gen = start(), sigmas(10), SampleNoise(0, range(64), stream=1)
    assert torch.equal(SAMPLERS["edm_stochastic"].fn(MIXTURE, x, s, None, gen, S_churn=0.0),
                       SAMPLERS["heun"].fn(MIXTURE, x, s))


def test_edm_stochastic_churns_only_inside_s_tmin_s_tmax():
    """No sigma of the schedule inside [S_tmin, S_tmax]: no noise is drawn, the run is Heun's."""
    x, s, gen = start(), sigmas(10), SampleNoise(0, range(64), stream=1)
    out = SAMPLERS["edm_stochastic"].fn(MIXTURE, x, s, None, gen, S_churn=80.0, S_tmin=100.0, S_tmax=200.0)
    assert torch.equal(out, SAMPLERS["heun"].fn(MIXTURE, x, s))


def test_euler_ancestral_without_eta_is_euler():
    x, s = start(), sigmas(10)
    out = SAMPLERS["euler_ancestral"].fn(MIXTURE, x, s, None, SampleNoise(0, range(64), stream=1), eta=0.0)
    torch.testing.assert_close(out, SAMPLERS["euler"].fn(MIXTURE, x, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 4, 9])
def test_consistency_returns_the_data_point(steps):
    """A denoiser that always answers y* (a perfect consistency model of a point mass) gives y* at any step count."""
    y_star = torch.tensor([[0.3, -1.7]])
    point = CallableDenoiser(lambda x, sigma, cond: y_star.expand_as(x))
    out = SAMPLERS["consistency"].fn(point, start(5).float(), sigmas(steps).float(), None,
                                     SampleNoise(0, range(5), stream=1))
    assert torch.equal(out, y_star.expand(5, 2))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_ode_step_per_row_equals_the_scalar_steps(solver):
    """ode_step with a sigma per row equals heun_step / an Euler step taken row by row (sigma_next = 0 included)."""
    from fewstep.samplers.ode import heun_step, ode_step, to_d

    d = MIXTURE
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    sigma, sigma_next = torch.tensor([5.0, 1.0, 0.3]).double(), torch.tensor([2.0, 0.0, 0.1]).double()
    out = ode_step(d, x, sigma, sigma_next, None, solver)
    for i in range(3):
        xi, s, sn = x[i:i + 1], sigma[i], sigma_next[i]
        ref = heun_step(d, xi, s, sn) if solver == "heun" else xi + to_d(xi, s.reshape(1), d(xi, s.reshape(1))) * (sn - s)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-10)


def test_ddim_eta_zero_is_the_default_and_eta_is_euler_ancestral():
    x, s = start(8), sigmas(6)
    noise = SampleNoise(0, range(8), stream=1)
    assert torch.equal(SAMPLERS["ddim"].fn(MIXTURE, x, s, None, noise, eta=0.0), SAMPLERS["ddim"].fn(MIXTURE, x, s))
    assert torch.equal(SAMPLERS["ddim"].fn(MIXTURE, x, s), SAMPLERS["euler"].fn(MIXTURE, x, s))
    assert torch.equal(SAMPLERS["ddim"].fn(MIXTURE, x, s, None, SampleNoise(0, range(8), stream=1), eta=0.5),
                       SAMPLERS["euler_ancestral"].fn(MIXTURE, x, s, None, SampleNoise(0, range(8), stream=1), eta=0.5))


def test_sampler_options_are_checked_against_the_sampler():
    from fewstep.core.errors import UserError
    from fewstep.samplers import check_sampler_options

    check_sampler_options("edm_stochastic", {"S_churn": 10.0, "S_noise": 1.0, "S_tmin": 0.1, "S_tmax": 10.0})
    check_sampler_options("ddim", {"eta": 0.3})
    with pytest.raises(UserError, match="sampler euler takes no option 'eta'; use ddim or euler_ancestral"):
        check_sampler_options("euler", {"eta": 0.3})
