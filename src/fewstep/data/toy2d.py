"""2-D toy distributions with exact samplers and (log-)densities, for sharp, fast comparisons."""

from __future__ import annotations

import math
from typing import Callable

import torch

from fewstep.data.base import Dataset

N_TRAIN, N_TEST = 20000, 5000
CURVE_POINTS = 2048  # quadrature nodes for densities of "curve + Gaussian noise" sets


def _gauss_ring(n: int, g: torch.Generator, modes: int = 8, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    k = torch.randint(modes, (n,), generator=g)
    angle = 2 * math.pi * k / modes
    centers = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return centers + std * torch.randn(n, 2, generator=g)


def ring_centers(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    angle = 2 * math.pi * torch.arange(modes) / modes
    return radius * torch.stack([angle.cos(), angle.sin()], 1)


def _mixture_log_density(centers: torch.Tensor, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(x) of an equal-weight isotropic Gaussian mixture (exact)."""
    def log_p(x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x.double(), centers.double()) ** 2
        log_n = -d2 / (2 * std**2) - math.log(2 * math.pi * std**2)
        return (torch.logsumexp(log_n, 1) - math.log(len(centers))).float()
    return log_p


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform on the 8 dark cells of a 4x4 board over [-2, 2]^2."""
    cell = torch.randint(8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    u = torch.rand(n, 2, generator=g)
    return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


def _checkerboard_log_density(x: torch.Tensor) -> torch.Tensor:
    col, row = torch.floor(x[:, 0] + 2), torch.floor(x[:, 1] + 2)
    inside = (col >= 0) & (col < 4) & (row >= 0) & (row < 4) & ((col + row) % 2 == 0)
    return torch.where(inside, torch.full_like(x[:, 0], -math.log(8.0)), torch.full_like(x[:, 0], -math.inf))


def _moons_curve(theta: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    upper = torch.stack([theta.cos(), theta.sin()], 1)
    lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
    return (torch.where(which[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25])) * 1.5


def _moons(n: int, g: torch.Generator, std: float = 0.1) -> torch.Tensor:
    theta = torch.rand(n, generator=g) * math.pi
    which = torch.randint(2, (n,), generator=g)
    return _moons_curve(theta, which) + std * torch.randn(n, 2, generator=g)


def _swiss_curve(u: torch.Tensor) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * u)
    return torch.stack([t * t.cos(), t * t.sin()], 1) / 5.0


def _swissroll(n: int, g: torch.Generator, std: float = 0.1) -> torch.Tensor:
    return _swiss_curve(torch.rand(n, generator=g)) + std * torch.randn(n, 2, generator=g)


def _nodes_moons() -> torch.Tensor:
    theta = (torch.arange(CURVE_POINTS // 2) + 0.5) / (CURVE_POINTS // 2) * math.pi
    return torch.cat([_moons_curve(theta, torch.zeros_like(theta)), _moons_curve(theta, torch.ones_like(theta))])


# A "curve + Gaussian noise" density is a Gaussian mixture over quadrature nodes c(u_k) of the curve.
TOY_SETS = {
    "8gaussians": (_gauss_ring, lambda: _mixture_log_density(ring_centers(), 0.1)),
    "checkerboard": (_checkerboard, lambda: _checkerboard_log_density),
    "moons": (_moons, lambda: _mixture_log_density(_nodes_moons(), 0.1)),
    "swissroll": (_swissroll, lambda: _mixture_log_density(_swiss_curve((torch.arange(CURVE_POINTS) + 0.5) / CURVE_POINTS), 0.1)),
}


TOY_CENTRES = {"8gaussians": ring_centers()}  # sets made of separated modes: the ruler reports their coverage


def load_toy(name: str, seed: int = 0) -> Dataset:
    """A 2-D set: fixed train/test draws, the exact sampler and the exact log-density."""
    draw, density = TOY_SETS[name]
    g = torch.Generator().manual_seed(seed)
    train, test = draw(N_TRAIN, g), draw(N_TEST, g)
    return Dataset(name, "vector", train.float(), test.float(), log_density=density(),
                   sampler=lambda n, gen: draw(n, gen).float(), centres=TOY_CENTRES.get(name))
