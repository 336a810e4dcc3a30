"""Classifier-free guidance as a denoiser wrapper, so every sampler gets it for free.

Cost accounting: a guided step is ONE forward of 2x the rows (conditional and unconditional rows concatenated).
`CountingDenoiser(CFGDenoiser(model))` counts it as one call (NFE) of the batch's rows; the rows the model really
evaluated are in `CFGDenoiser.rows_evaluated`. `CFGDenoiser(CountingDenoiser(model))` counts one call with 2x rows.
"""

from __future__ import annotations

import torch

from fewstep.core.denoiser import Cond, Denoiser, as_sigma_batch
from fewstep.core.errors import UserError


class CFGDenoiser:
    """D = D_uncond + scale (D_cond - D_uncond) (Ho & Salimans 2022), guided only for sigma_lo < sigma <= sigma_hi.

    Outside the interval (Kynkaanniemi et al. 2024) a row gets the conditional pass alone: scale 1, one row.
    `cond` holds class labels [batch]; the unconditional pass uses the null label num_classes.
    """

    def __init__(self, denoiser: Denoiser, scale: float, sigma_interval: tuple[float, float] | None = None):
        if not denoiser.num_classes:
            raise UserError("classifier-free guidance needs a class-conditional model; this one is unconditional")
        self.inner = denoiser
        self.scale = float(scale)
        self.sigma_interval = sigma_interval
        self.sigma_range = denoiser.sigma_range
        self.sigma_data = denoiser.sigma_data
        self.num_classes = denoiser.num_classes
        self.rows_evaluated = 0

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return self.inner.init_noise_scale(sigma_max)

    def guided(self, sigma: torch.Tensor) -> torch.Tensor:
        """Which rows are guided: a bool [batch] mask of sigma inside the interval (all rows when there is none)."""
        if self.sigma_interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.sigma_interval
        return (sigma > lo) & (sigma <= hi)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if cond is None:  # unconditional sampling: D_cond = D_uncond, nothing to guide
            self.rows_evaluated += x.shape[0]
            return self.inner(x, sigma, None)
        sigma = as_sigma_batch(sigma, x)
        labels = torch.as_tensor(cond, device=x.device).long().reshape(x.shape[0])
        rows = self.guided(sigma).nonzero()[:, 0]
        null = torch.full_like(labels[rows], self.num_classes)
        # one forward: every row conditional, then the guided rows again with the null label
        out = self.inner(torch.cat([x, x[rows]]), torch.cat([sigma, sigma[rows]]), torch.cat([labels, null]))
        self.rows_evaluated += x.shape[0] + len(rows)
        d_cond, d_uncond = out[: x.shape[0]], out[x.shape[0]:]
        return d_cond.index_copy(0, rows, d_uncond + self.scale * (d_cond[rows] - d_uncond))
