"""EDM's training objective (Karras et al. 2022, eq. 2 and Table 1) as a method of the shared loop."""

from __future__ import annotations

import torch
from torch import nn

from fewstep.core import cond as conds
from fewstep.core.denoiser import append_dims
from fewstep.data.batches import Batch


def edm_sigma(batch: Batch, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's log-normal training noise levels, one per row: ln(sigma) ~ N(p_mean, p_std^2)."""
    return (batch.randn() * p_std + p_mean).exp()


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (in progressive distillation: "SNR + 1")."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMTraining:
    """Denoising score matching with log-normal sigmas and weight lambda = (s^2 + sd^2) / (s * sd)^2."""

    def __init__(self, denoiser: nn.Module, p_mean: float = -1.2, p_std: float = 1.2, label_dropout: float = 0.1):
        self.modules = {"model": denoiser}  # the loop may swap in a wrapped (DDP) copy; attributes come from below
        self.ema_modules = ("model",)
        self.sigma_data, self.num_classes = denoiser.sigma_data, denoiser.num_classes
        self.p_mean, self.p_std, self.label_dropout = p_mean, p_std, label_dropout

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        sigma_data = self.sigma_data
        sigma = edm_sigma(batch, self.p_mean, self.p_std)
        noise = batch.randn(*batch.x.shape[1:])
        # the null condition (label or empty prompt) trains the unconditional model for classifier-free guidance
        cond = batch.cond
        if cond is not None:
            cond = conds.drop(cond, batch.rand() < self.label_dropout, self.num_classes)
        s = append_dims(sigma, batch.x.ndim)
        weight = edm_weight(s, sigma_data)
        denoised = self.modules["model"](batch.x + s * noise, sigma, cond)
        return {"model": (weight * (denoised - batch.x) ** 2).mean()}
