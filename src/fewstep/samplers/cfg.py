"""Classifier-free guidance as a denoiser wrapper, so every sampler gets it for free.

Cost accounting: a guided step is ONE forward of 2x the rows (conditional and unconditional rows concatenated).
`CountingDenoiser(CFGDenoiser(model))` counts it as one call (NFE) of the batch's rows; the rows the model really
evaluated are in `CFGDenoiser.rows_evaluated`. `CFGDenoiser(CountingDenoiser(model))` counts one call with 2x rows.
"""

from __future__ import annotations

import torch

from fewstep.core import cond as conds
from fewstep.core.cond import CondLike
from fewstep.core.denoiser import Denoiser, as_sigma_batch, is_conditional
from fewstep.core.errors import UserError


class CFGDenoiser:
    """D = D_uncond + scale (D_cond - D_uncond) (Ho & Salimans 2022), guided only for sigma_lo < sigma <= sigma_hi.

    Outside the interval (Kynkaanniemi et al. 2024) a row gets the conditional pass alone: scale 1, one row.
    The unconditional pass uses the condition's null: the null label num_classes for class labels, a text
    condition's own negative (the empty or the negative prompt).
    """

    def __init__(self, denoiser: Denoiser, scale: float, sigma_interval: tuple[float, float] | None = None):
        if not is_conditional(denoiser):
            raise UserError("classifier-free guidance needs a conditional model; this one is unconditional")
        self.inner = denoiser
        self.scale = float(scale)
        self.sigma_interval = sigma_interval
        self.sigma_range = denoiser.sigma_range
        self.sigma_data = denoiser.sigma_data
        self.num_classes = denoiser.num_classes
        self.rows_evaluated = 0

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        return self.inner.init_noise_scale(sigma_max)

    def guided(self, sigma: torch.Tensor) -> torch.Tensor:
        """Which rows are guided: a bool [batch] mask of sigma inside the interval (all rows when there is none)."""
        if self.sigma_interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.sigma_interval
        return (sigma > lo) & (sigma <= hi)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: CondLike = None) -> torch.Tensor:
        if cond is None:  # unconditional sampling: D_cond = D_uncond, nothing to guide
            self.rows_evaluated += x.shape[0]
            return self.inner(x, sigma, None)
        sigma = as_sigma_batch(sigma, x)
        rows = self.guided(sigma).nonzero()[:, 0]
        empty = conds.select(conds.null(cond, self.num_classes), rows)
        # one forward: every row conditional, then the guided rows again with the null condition
        out = self.inner(torch.cat([x, x[rows]]), torch.cat([sigma, sigma[rows]]), conds.concat(cond, empty))
        self.rows_evaluated += x.shape[0] + len(rows)
        d_cond, d_uncond = out[: x.shape[0]], out[x.shape[0]:]
        return d_cond.index_copy(0, rows, d_uncond + self.scale * (d_cond[rows] - d_uncond))
