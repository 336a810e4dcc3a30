"""2-D metrics against the true law: sliced W2, MMD, log-density, and their floors."""

from __future__ import annotations

import pytest
import torch

from fewstep.core.errors import UserError
from fewstep.data import load_dataset
from fewstep.metrics import evaluate_samples, log_density, mmd2, sliced_wasserstein2, toy_floor

N = 1000


@pytest.fixture(scope="module")
def gaussians():
    return load_dataset("8gaussians")


def draw(data, n: int, seed: int) -> torch.Tensor:
    return data.sampler(n, torch.Generator().manual_seed(seed))


def uniform(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 6 - 3


def test_same_law_is_near_zero_and_a_shifted_law_is_not(gaussians):
    a, b = draw(gaussians, N, 1), draw(gaussians, N, 2)
    shifted = b + torch.tensor([0.5, 0.0])
    assert sliced_wasserstein2(a, a) == 0.0
    assert sliced_wasserstein2(a, b) < 0.25 < sliced_wasserstein2(a, shifted)
    assert abs(mmd2(a, b)) < 0.005 < mmd2(a, shifted)
    assert sliced_wasserstein2(a, b) == sliced_wasserstein2(a, b)  # seeded projections


def test_sliced_w2_of_sets_of_different_sizes():
    a = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein2(a, a.repeat(2, 1)) == 0.0
    assert sliced_wasserstein2(a, a + 1.0) == pytest.approx(1.0, rel=0.1)  # E[(theta . (1, 1))^2] = 1


def test_log_density_of_true_samples_beats_uniform_noise(gaussians):
    assert log_density(gaussians, draw(gaussians, N, 1))[0] > log_density(gaussians, uniform(N))[0] + 10
    board = load_dataset("checkerboard")
    logp, finite = log_density(board, uniform(N))
    assert finite < 0.5 and logp == pytest.approx(-torch.log(torch.tensor(8.0)).item())
    assert log_density(board, torch.full((3, 2), 9.0)) == (float("-inf"), 0.0)


def test_evaluate_reports_every_metric_with_its_floor(gaussians):
    row = evaluate_samples(gaussians, uniform(N), teacher_samples=uniform(N, 1))
    for key in ("sw2", "mmd", "logp", "logp_finite", "agreement_rmse"):
        assert key in row
    for key in ("sw2", "mmd"):
        assert row[f"{key}_floor"] < row[key] / 2
    assert row["logp_floor"] > row["logp"] and row["floor_n"] == N
    assert row == evaluate_samples(gaussians, uniform(N), teacher_samples=uniform(N, 1))
    assert toy_floor(gaussians, N) == toy_floor(gaussians, N)


def test_a_set_known_only_by_its_points_is_measured_against_its_own_rows():
    """No exact sampler and no density (a user's points file): reference and floor are disjoint rows of the data's
    own points, logp is absent, and mode coverage still comes from the centres."""
    data = load_dataset("8gaussians")
    data.sampler, data.log_density = None, None
    row = evaluate_samples(data, uniform(200))
    assert "logp" not in row and row["n_ref"] == 200 and row["floor_n"] == 200
    assert row["sw2_floor"] < row["sw2"] and row["modes_covered_floor"] == 1.0
    assert row["off_mode"] > 0.5 > row["off_mode_floor"]  # uniform noise sits mostly between the modes
    with pytest.raises(UserError, match="at least 4 samples"):
        evaluate_samples(load_dataset("8gaussians"), uniform(3))
