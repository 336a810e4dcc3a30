"""Distribution matching distillation, DMD2 (Yin et al. 2024): a few-step generator trained with the difference of
the teacher's ("real") and an online "fake" score at its own noised samples; no regression to teacher outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from fewstep.core.denoiser import append_dims
from fewstep.train.batch import Batch


def edm_sigma(batch: Batch, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's log-normal training noise levels, one per row."""
    return (batch.randn() * p_std + p_mean).exp()


class DMD2:
    """Two networks, two optimisers. Generator loss (DMD eq. 7, DMD2 code's normalisation):
    g = (D_fake(x_s) - D_real(x_s)) / mean|x - D_real(x_s)|, loss = 1/2 ||x - sg(x - g)||^2, x_s = x + s n.
    Fake score loss: EDM denoising loss on the generator's detached samples. The generator steps once every
    `fake_updates` steps (DMD2's two time-scale update rule), the fake score every step.

    Multistep generators train on their own backward simulation (DMD2 sec. 4.5): from noise, k steps of
    predict-clean / re-noise along `sigmas` without gradient, then the trained step at sigma_k.
    """

    def __init__(self, generator: nn.Module, teacher: nn.Module, sigmas: torch.Tensor, fake_updates: int = 5):
        self.modules = {"generator": generator, "fake": copy.deepcopy(generator)}
        self.ema_modules = ("generator",)
        self.update_every = {"generator": fake_updates}
        self.teacher, self.sigmas = teacher, sigmas.float()
        self.sigma_data = generator.sigma_data

    def _generate(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        labels, shape = batch.labels, batch.x.shape[1:]
        sig = self.sigmas.to(batch.x.device)
        k = int(torch.rand(1, generator=batch.generator) * (len(sig) - 1))  # the student step this batch trains
        x = batch.randn(*shape) * sig[0]
        g = self.modules["generator"]
        with torch.no_grad():
            for i in range(k):
                x = g(x, sig[i].expand(len(x)), labels) + sig[i + 1] * batch.randn(*shape)
        return g(x, sig[k].expand(len(x)), labels), labels

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, labels = self._generate(batch)
        noise, sigma = batch.randn(*x.shape[1:]), edm_sigma(batch)
        s = append_dims(sigma, x.ndim)
        with torch.no_grad():
            x_s = x + s * noise
            real = self.teacher(x_s, sigma, labels)
            fake = self.modules["fake"](x_s, sigma, labels)
            norm = (x - real).abs().flatten(1).mean(1).clamp(min=1e-8)
            grad = (fake - real) / append_dims(norm, x.ndim)
        generator_loss = 0.5 * ((x - (x - grad).detach()) ** 2).mean()
        sigma_f = edm_sigma(batch)
        s_f = append_dims(sigma_f, x.ndim)
        weight = (s_f**2 + self.sigma_data**2) / (s_f * self.sigma_data) ** 2
        x_fake = x.detach() + s_f * batch.randn(*x.shape[1:])
        fake_loss = (weight * (self.modules["fake"](x_fake, sigma_f, labels) - x.detach()) ** 2).mean()
        return {"generator": generator_loss, "fake": fake_loss}


def run(ctx) -> list[Path]:
    """Train a DMD2 generator for the most requested steps and export it as out/model (consistency sampling)."""
    data = ctx.require_data() if ctx.teacher.info.num_classes else ctx.data
    steps = ctx.steps[-1]
    sigmas = ctx.student_schedule(steps)[:-1]
    method = DMD2(ctx.make_student(), ctx.guided_teacher(), sigmas, ctx.cfg.dmd_fake_updates)
    items = data.train if data is not None else torch.zeros(1, *ctx.teacher.info.shape)
    trained = ctx.train(method, "train", items, ctx.train_labels(), "consistency")["generator"]
    if not ctx.finished():
        return []
    return [ctx.export(trained, "model", "consistency", ctx.steps, "dmd2")]
