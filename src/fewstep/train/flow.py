"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023) as a method of the shared loop.

With x_t = (1 - t) y + t n the network learns v = n - y; SD3 (Esser et al. 2024, eq. 19) draws t from a logit-normal.
Through a flow denoiser (models/flow.py) D = x_t - t v_pred, so v_pred - (n - y) = (y - D) / t: the velocity loss is
the denoising loss with weight 1 / t^2, and the method needs nothing but D(x, sigma) at sigma = t / (1 - t).
"""

from __future__ import annotations

import torch
from torch import nn

from fewstep.core import cond as conds
from fewstep.core.denoiser import append_dims
from fewstep.core.errors import UserError
from fewstep.data.batches import Batch
from fewstep.train.vp import dropped_captions

TIME_SAMPLINGS = ("logit_normal", "uniform")
T_EPS = 1e-4  # t is kept in [T_EPS, 1 - T_EPS]: sigma <= 1e4 and 1/t^2 <= 1e8 stay finite in float32


def flow_t(batch: Batch, time_sampling: str = "logit_normal", mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training times, one per row: sigmoid(N(mean, std^2)) (SD3's logit-normal) or U(0, 1), inside [eps, 1 - eps]."""
    if time_sampling == "logit_normal":
        t = torch.sigmoid(batch.randn() * std + mean)
    elif time_sampling == "uniform":
        t = batch.rand()
    else:
        raise UserError(f"unknown time sampling {time_sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}")
    return t.clamp(T_EPS, 1 - T_EPS)


class FlowMatchingTraining:
    """Velocity regression ||v_pred - (n - y)||^2 at t ~ logit-normal or uniform, via the flow denoiser's D."""

    def __init__(self, denoiser: nn.Module, time_sampling: str = "logit_normal", logit_mean: float = 0.0,
                 logit_std: float = 1.0, label_dropout: float = 0.1):
        if time_sampling not in TIME_SAMPLINGS:
            raise UserError(f"unknown time sampling {time_sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}")
        self.modules = {"model": denoiser}  # the loop may swap in a wrapped (DDP) copy; attributes come from below
        self.ema_modules = ("model",)
        self.num_classes = denoiser.num_classes
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std
        self.label_dropout = label_dropout

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        t = flow_t(batch, self.time_sampling, self.logit_mean, self.logit_std)
        noise = batch.randn(*batch.x.shape[1:])
        # the null condition (label or empty prompt) trains the unconditional model for classifier-free guidance
        cond = batch.cond
        if cond is not None:
            cond = conds.drop(cond, batch.rand() < self.label_dropout, self.num_classes)
        s = t / (1 - t)  # x = y + sigma n is x_t (1 + sigma)
        denoised = self.modules["model"](batch.x + append_dims(s, batch.x.ndim) * noise, s, cond)
        return {"model": (((denoised - batch.x) / append_dims(t, batch.x.ndim)) ** 2).mean()}


class FlowTextTraining:
    """Velocity regression of a text-to-image network v(x_t, t, captions) (train/sd3.py), with prompt dropout."""

    def __init__(self, network: nn.Module, time_sampling: str = "logit_normal", prompt_dropout: float = 0.1):
        if time_sampling not in TIME_SAMPLINGS:
            raise UserError(f"unknown time sampling {time_sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}")
        self.modules = {"model": network}
        self.ema_modules = ("model",)
        self.time_sampling, self.prompt_dropout = time_sampling, prompt_dropout

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch.x
        t = flow_t(batch, self.time_sampling)
        noise = batch.randn(*y.shape[1:])
        captions = dropped_captions(batch, self.prompt_dropout)
        x_t = (1 - append_dims(t, y.ndim)) * y + append_dims(t, y.ndim) * noise
        return {"model": ((self.modules["model"](x_t, t, captions) - (noise - y)) ** 2).mean()}
