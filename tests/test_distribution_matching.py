"""Distribution-matching losses on an exact Gaussian teacher: SiD pushes a shifted generator back to the data,
SiD's and DMD2's generator gradients vanish when the generator already draws the data distribution; DMD2's
regression term and its fake score's own learning rate."""

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import SigmaRange
from fewstep.data.batches import TensorSource
from fewstep.distill.dmd import DMD2, Regression
from fewstep.distill.sid import SiD

MU, S = torch.tensor([1.0, -2.0]), 0.5  # the data: N(MU, S^2 I)
SIGMAS = torch.tensor([80.0])  # a one-step generator


def gaussian_denoiser(mean: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact D(x, sigma) of N(mean, S^2 I): (S^2 x + sigma^2 mean) / (S^2 + sigma^2)."""
    s2 = sigma[:, None] ** 2
    return (S**2 * x + s2 * mean) / (S**2 + s2)


class Teacher(nn.Module):
    sigma_data, sigma_range = S, SigmaRange(0.002, 80.0)

    def __init__(self, mean: torch.Tensor, pair: bool = False):
        super().__init__()
        self.mean, self.pair = mean, pair

    def forward(self, x, sigma, cond=None):
        d = gaussian_denoiser(self.mean, x, sigma)
        return (d, None) if self.pair else d


class ShiftedGenerator(nn.Module):
    """One step from noise sigma_max z to MU + delta + S z: the data shifted by a learnable delta."""

    sigma_data, sigma_range = S, SigmaRange(0.002, 80.0)

    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.delta = nn.Parameter(delta.clone())

    def forward(self, x, sigma, cond=None):
        return MU + self.delta + S * x / sigma[:, None]


def generator_gradient(method_cls, delta: torch.Tensor, **kw) -> torch.Tensor:
    """d(generator loss)/d(delta) over 20000 draws, with the fake score the exact score of the generator's law."""
    g = ShiftedGenerator(delta)
    method = method_cls(g, Teacher(MU), SIGMAS, **kw)
    method.fake = method.modules["fake"] = Teacher(MU + delta, pair=method_cls is DMD2)
    batch = TensorSource(torch.zeros(20000, 2), None, seed=0).batch(0, 20000, 0, 1, torch.device("cpu"))
    method.losses(batch)["generator"].backward()
    return g.delta.grad


@pytest.mark.parametrize("method_cls, kw", [(SiD, {}), (DMD2, {"fake_updates": 1})])
def test_generator_gradient_vanishes_at_the_data(method_cls, kw):
    assert generator_gradient(method_cls, torch.zeros(2), **kw).abs().max() < 1e-7


@pytest.mark.parametrize("alpha", [0.0, 1.2])
def test_sid_pushes_a_shifted_generator_toward_the_data(alpha):
    """With exact scores, d loss / d delta = E[c^2 / w] delta / D (c = sigma^2 / (S^2 + sigma^2), w the per-sample
    normaliser): the same sign as the shift in every coordinate, and proportional to it."""
    delta = torch.tensor([0.3, -0.2])
    grad = generator_gradient(SiD, delta, alpha=alpha)
    assert (torch.sign(grad) == torch.sign(delta)).all(), grad
    ratio = grad / delta
    assert ratio[0] == pytest.approx(float(ratio[1]), rel=0.15)  # one scale for both coordinates
    assert generator_gradient(SiD, 2 * delta, alpha=alpha) / grad == pytest.approx(torch.full((2,), 2.0), rel=0.35)


def test_a_sid_student_moves_toward_the_data():
    """Twenty Adam steps of SiD's generator on the exact teacher (fake score trained online) shrink the shift."""
    g = ShiftedGenerator(torch.tensor([0.6, -0.6]))
    method = SiD(g, Teacher(MU), SIGMAS)
    opt = torch.optim.Adam(g.parameters(), lr=0.02)
    for step in range(20):
        batch = TensorSource(torch.zeros(4096, 2), None, seed=1).batch(step, 4096, 0, 1, torch.device("cpu"))
        method.fake = method.modules["fake"] = Teacher(MU + g.delta.detach())  # the fake score, exact
        opt.zero_grad()
        method.losses(batch)["generator"].backward()
        opt.step()
    assert g.delta.detach().norm() < 0.7 * torch.tensor([0.6, -0.6]).norm()


def test_dmd2_regression_term_adds_its_weight_times_the_shift():
    """DMD's regression term on pairs (z, MU + S z), the map the unshifted generator draws: it adds weight * delta to
    the generator's gradient (d/d delta of weight * mean((delta)^2) over two coordinates), and nothing at delta 0."""
    z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(3))
    pairs, weightless = (Regression(z, MU + S * z, None, lambda c: c, w) for w in (0.25, 0.0))
    delta = torch.tensor([0.3, -0.2])
    plain = generator_gradient(DMD2, delta, fake_updates=1, regression=weightless)  # the same draws, no term
    regressed = generator_gradient(DMD2, delta, fake_updates=1, regression=pairs)
    torch.testing.assert_close(regressed - plain, 0.25 * delta, rtol=1e-4, atol=1e-6)
    assert generator_gradient(DMD2, torch.zeros(2), fake_updates=1, regression=pairs).abs().max() < 1e-7


def test_dmd2_fake_score_takes_its_own_learning_rate(tmp_path):
    """--dmd-fake-lr-scale: Adam's first step moves each parameter by its lr, the fake score's scaled."""
    from fewstep.config import LoopConfig
    from fewstep.train.loop import run_loop

    g = ShiftedGenerator(torch.tensor([0.3, -0.2]))
    method = DMD2(g, Teacher(MU), SIGMAS, fake_updates=1, fake_lr_scale=0.1)
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in method.modules.items()}
    run_loop(method, TensorSource(torch.zeros(64, 2)), LoopConfig(steps=1, batch_size=64, lr=1e-2), tmp_path)
    moved = {n: max(float((p.detach() - b).abs().max()) for p, b in zip(m.parameters(), before[n]))
             for n, m in method.modules.items()}
    assert moved["generator"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["fake"] == pytest.approx(1e-3, rel=1e-3)


def test_dmd2_normaliser_floor_bounds_one_samples_weight():
    """--dmd-normaliser-floor f: no sample's normaliser falls below f x the batch's median (in 2-D one sample's
    mean|x - D_real| can be ~0 and its gradient then swamps the batch's); 0 keeps DMD's per-sample normaliser."""
    x = torch.zeros(5, 2)
    real = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [1e-6, 0.0], [4.0, 4.0]])
    plain, floored = (DMD2(ShiftedGenerator(torch.zeros(2)), Teacher(MU), SIGMAS, normaliser_floor=f)
                      for f in (0.0, 0.1))
    torch.testing.assert_close(plain.normaliser(x, real).flatten(), torch.tensor([1.0, 2.0, 3.0, 5e-7, 4.0]))
    torch.testing.assert_close(floored.normaliser(x, real).flatten(), torch.tensor([1.0, 2.0, 3.0, 0.2, 4.0]))
