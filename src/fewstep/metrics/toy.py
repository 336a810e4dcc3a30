"""2-D quality against the true law: sliced Wasserstein-2, Gaussian-kernel MMD, mean log-density."""

from __future__ import annotations

import math

import numpy as np
import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.persample import SampleMean

N_PROJECTIONS = 256
PROJECTION_SEED = 0
MMD_BANDWIDTH = 0.5  # kernel width h in data units; the 2-D sets span about [-3, 3] with mode widths ~0.1-1
KERNEL_CHUNK = 4096


def random_directions(dim: int, n_projections: int = N_PROJECTIONS, seed: int = PROJECTION_SEED) -> torch.Tensor:
    """[dim, n_projections] seeded random unit directions (float64)."""
    theta = torch.randn(dim, n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return theta / theta.norm(dim=0)


def projected_w2(pa: torch.Tensor, pb: torch.Tensor) -> float:
    """sqrt(mean over columns of W2^2 between the 1-D columns of pa and pb) (projections of two point sets).

    In 1-D, W2 matches sorted values; sets of different sizes are compared at max(n_a, n_b) quantile levels.
    """
    # numpy sorts the rows of the transposes several times faster than torch sorts columns (same values)
    pa, pb = (torch.from_numpy(np.sort(p.T.numpy(), axis=1)) for p in (pa, pb))
    m = max(pa.shape[1], pb.shape[1])
    levels = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    qa, qb = pa[:, (levels * pa.shape[1]).long()], pb[:, (levels * pb.shape[1]).long()]
    return math.sqrt(float((qa - qb).square().mean()))


def sliced_wasserstein2(a: torch.Tensor, b: torch.Tensor, n_projections: int = N_PROJECTIONS,
                        seed: int = PROJECTION_SEED) -> float:
    """sqrt(mean over random unit directions theta of W2^2(<a, theta>, <b, theta>)), directions seeded."""
    theta = random_directions(a.shape[1], n_projections, seed)
    return projected_w2(a.double() @ theta, b.double() @ theta)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float = MMD_BANDWIDTH) -> torch.Tensor:
    """exp(-||x_i - y_j||^2 / (2 h^2)) for every pair [len(x), len(y)]."""
    return torch.exp(-torch.cdist(x, y).square() / (2 * bandwidth**2))


def kernel_quadratic(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor,
                     bandwidth: float = MMD_BANDWIDTH) -> torch.Tensor:
    """wx K(x, y) wy^T for each row of the weights wx [r, len(x)], wy [r, len(y)]: [r], in row chunks of x."""
    return sum(((wx[:, lo:lo + KERNEL_CHUNK] @ gaussian_kernel(x[lo:lo + KERNEL_CHUNK], y, bandwidth)) * wy).sum(1)
               for lo in range(0, len(x), KERNEL_CHUNK))


def mmd2_weighted(a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor,
                  bandwidth: float = MMD_BANDWIDTH) -> torch.Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) of the multisets given by integer counts wa [r, len(a)], wb [r, len(b)]
    (one multiset per row: a bootstrap resample); pairs of the same position are left out, duplicates are not."""
    a, b, wa, wb = a.double(), b.double(), wa.double(), wb.double()
    n, m = wa.sum(1), wb.sum(1)
    k_aa = (kernel_quadratic(a, a, wa, wa, bandwidth) - n) / (n * (n - 1))  # k(x, x) = 1 on the diagonal
    k_bb = (kernel_quadratic(b, b, wb, wb, bandwidth) - m) / (m * (m - 1))
    return k_aa + k_bb - 2 * kernel_quadratic(a, b, wa, wb, bandwidth) / (n * m)


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float = MMD_BANDWIDTH) -> float:
    """Unbiased MMD^2 with a Gaussian kernel of width h (Gretton et al. 2012, eq. 3); near 0, it can be negative."""
    return float(mmd2_weighted(a, b, torch.ones(1, len(a)), torch.ones(1, len(b)), bandwidth)[0])


def log_density_terms(data: Dataset, samples: torch.Tensor) -> dict[str, SampleMean]:
    """Per-sample terms of logp (exact log p averaged where p > 0) and logp_finite (the fraction where it is)."""
    if data.log_density is None:
        raise UserError(f"{data.name} has no known density, so logp is unavailable")
    log_p = data.log_density(samples.float()).double()
    finite = torch.isfinite(log_p)
    return {"logp": SampleMean(torch.where(finite, log_p, 0.0), finite), "logp_finite": SampleMean(finite)}


def log_density(data: Dataset, samples: torch.Tensor) -> tuple[float, float]:
    """Mean exact log p over the samples where p > 0, and their fraction (checkerboard has p = 0 off the board)."""
    terms = log_density_terms(data, samples)
    finite = terms["logp_finite"].estimate()
    return terms["logp"].estimate() if finite > 0 else -math.inf, finite


def fresh_samples(data: Dataset, n: int, seed: int) -> torch.Tensor:
    """n new draws of the true law (Dataset.sampler) from a generator seeded with `seed`."""
    if data.sampler is None:
        raise UserError(f"{data.name} has no exact sampler, so sw2, mmd and logp are unavailable")
    return data.sampler(n, torch.Generator().manual_seed(seed))


def toy_quality(data: Dataset, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """sw2 and mmd against the reference; logp and logp_finite where the density is known; mode coverage where the
    data has mode centres."""
    out = {"sw2": sliced_wasserstein2(samples, reference), "mmd": mmd2(samples, reference)}
    if data.log_density is not None:
        out["logp"], out["logp_finite"] = log_density(data, samples)
    if data.centres is not None:
        out.update(mode_coverage(samples, reference, data.centres))
    return out


def mode_index(samples: torch.Tensor, centers: torch.Tensor, radius: float) -> torch.Tensor:
    """Per sample: the index of its nearest mode centre when within `radius` of it, else len(centers) (off every mode)."""
    d = torch.cdist(samples.double(), centers.double())
    nearest = d.argmin(1)
    near = d.gather(1, nearest[:, None])[:, 0] <= radius
    return torch.where(near, nearest, len(centers))


def mode_masses(samples: torch.Tensor, centers: torch.Tensor, radius: float) -> torch.Tensor:
    """Fraction of samples within `radius` of each mode centre (nearest centre wins); 1 - sum is off every mode."""
    index = mode_index(samples, centers, radius)
    return torch.bincount(index, minlength=len(centers) + 1)[:-1].double() / len(samples)


def mode_radius(centres: torch.Tensor) -> float:
    """Half the smallest distance between two mode centres: a point within it of a centre is on that mode."""
    if len(centres) < 2:
        return math.inf
    d = torch.cdist(centres.double(), centres.double())
    return 0.5 * float(d[~torch.eye(len(centres), dtype=torch.bool)].min())


def mode_coverage(samples: torch.Tensor, reference: torch.Tensor, centres: torch.Tensor) -> dict[str, float]:
    """Mode collapse against the reference's mass per mode: the share of modes holding at least half their mass
    (modes_covered), the worst mode's mass ratio (worst_mode_ratio) and the mass on no mode (off_mode)."""
    radius = mode_radius(centres)
    return coverage_of_masses(mode_masses(samples, centres, radius), mode_masses(reference, centres, radius))


def coverage_of_masses(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """mode_coverage's numbers from the sample and reference mass per mode."""
    present = want > 0
    ratio = got[present] / want[present]
    return {"modes_covered": float((ratio >= 0.5).double().mean()), "worst_mode_ratio": float(ratio.min()),
            "off_mode": 1.0 - float(got.sum())}
