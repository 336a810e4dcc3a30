"""Adversarial distillation: ADD / LADD (Sauer et al. 2023, 2024) and SDXL-Lightning's progressive rounds (Lin et al.
2024). The discriminator is heads on the frozen teacher's own features at a noise level (discriminator.py), so it
works for any backbone and any data; hinge loss and approximate R1."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fewstep.config import option
from fewstep.core.denoiser import append_dims
from fewstep.distill.discriminator import Discriminator, approx_r1, hinge_losses
from fewstep.distill.progressive import ProgressiveOptions, round_label, rounds
from fewstep.samplers.ode import ode_step
from fewstep.data.batches import Batch
from fewstep.train.edm import edm_sigma, edm_weight


@dataclass
class AdversarialOptions:
    """The discriminator's loss terms and learning rate, and the student's non-adversarial term."""

    adv_distill_weight: float = option(2.5, "add: score-distillation weight (0 = LADD); lightning: regression "
                                            "weight (0 = MSE-free)")
    adv_r1_gamma: float = option(1.0, "add, lightning: approximate-R1 penalty on the discriminator (0 = none)")
    adv_disc_lr_scale: float = option(10.0, "add, lightning: the discriminator heads' learning rate / the student's")

    PRESETS: ClassVar[dict] = {}


@dataclass
class LightningOptions(ProgressiveOptions, AdversarialOptions):
    """SDXL-Lightning: progressive rounds judged by a discriminator."""

    PRESETS: ClassVar[dict] = ProgressiveOptions.PRESETS


def _renoise(x: torch.Tensor, sigma_x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x at noise level sigma_x, noised further to level sigma >= sigma_x."""
    extra = (sigma**2 - sigma_x**2).clamp(min=0).sqrt()
    return x + append_dims(extra, x.ndim) * noise


def sum_sq(err: torch.Tensor) -> torch.Tensor:
    """Summed over an item's elements, averaged over the batch: on the scale of a per-item logit at any size."""
    return err.flatten(1).sum(1).mean()


class AdversarialDistillation:
    """ADD: the student maps real data noised to one of its own sigmas to a clean sample. Its loss is the hinge
    generator loss -D(x_hat_s) plus `distill_weight` times ADD's score-distillation term
    ||x_hat - sg(D_teacher(x_hat + s n))||^2 (summed over the item, as the logit is per item) weighted by
    1 / (1 + s^2) (ADD's c(t) = alpha_t); distill_weight = 0 is LADD's purely adversarial objective. Real and fake
    samples are both re-noised to a level s drawn from EDM's training law before the discriminator, which reads the
    teacher's features there.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, backbone: nn.Module, sigmas: torch.Tensor,
                 disc: Discriminator, distill_weight: float = 2.5, r1_gamma: float = 1.0, disc_lr_scale: float = 10.0):
        self.modules = {"student": student, "disc": disc}
        self.ema_modules = ("student",)
        self.lr_scale = {"disc": disc_lr_scale}
        self.teacher, self.backbone, self.sigmas = teacher, backbone, sigmas.float()
        self.sigma_data = student.sigma_data
        self.distill_weight, self.r1_gamma = distill_weight, r1_gamma

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        y, labels, shape = batch.x, batch.cond, batch.x.shape[1:]
        sig = self.sigmas.to(y.device)
        k = (batch.rand() * len(sig)).long().clamp(max=len(sig) - 1)
        x_hat = self.modules["student"](y + append_dims(sig[k], y.ndim) * batch.randn(*shape), sig[k], labels)
        s = edm_sigma(batch)
        real = y + append_dims(s, y.ndim) * batch.randn(*shape)
        fake = x_hat + append_dims(s, y.ndim) * batch.randn(*shape)
        disc, t = self.modules["disc"], self.backbone
        student_loss = -disc(t, fake, s, labels).mean()
        if self.distill_weight:
            with torch.no_grad():
                target = self.teacher(fake, s, labels)
            weight = append_dims(1 / (1 + s**2), y.ndim)
            student_loss = student_loss + self.distill_weight * sum_sq(weight * (x_hat - target) ** 2)
        return {"student": student_loss, "disc": self.critic_loss(batch, real, fake, s)}

    def critic_loss(self, batch: Batch, real: torch.Tensor, fake: torch.Tensor, s: torch.Tensor,
                    start: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The discriminator's hinge loss on noised real and (detached) student samples, plus approximate R1."""
        disc, t, labels = self.modules["disc"], self.backbone, batch.cond
        real_logits = disc(t, real, s, labels, start=start)
        loss = hinge_losses(real_logits, disc(t, fake.detach(), s, labels, start=start))
        if self.r1_gamma:
            r1 = approx_r1(disc, t, real, s, labels, real_logits, batch.randn(*real.shape[1:]), start=start)
            loss = loss + self.r1_gamma / 2 * r1
        return loss

    def diverging(self, losses: dict[str, float]) -> str | None:
        """The discriminator wins: its hinge loss is near zero, so the student gets no useful gradient."""
        return "the discriminator wins (hinge loss < 0.05)" if losses["disc"] < 0.05 else None


class LightningRound(AdversarialDistillation):
    """One progressive-adversarial round (SDXL-Lightning): a student step sigma_a -> sigma_c on karras_trailing(N)
    against the previous model's two steps over the same interval, judged by a discriminator conditioned on the
    starting point x_a (paired heads). Both end points are re-noised to max(sigma_c, s), s from EDM's training law,
    so the last round (sigma_c = 0) is judged like the others. `distill_weight` adds progressive distillation's
    regression to the two-step end point (SNR+1 weighted); 0 is Lightning's MSE-free objective.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, backbone: nn.Module, sigmas: torch.Tensor,
                 disc: Discriminator, solver: str = "euler", distill_weight: float = 0.0, r1_gamma: float = 1.0,
                 disc_lr_scale: float = 10.0):
        super().__init__(student, teacher, backbone, sigmas, disc, distill_weight, r1_gamma, disc_lr_scale)
        self.solver = solver

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        y, labels, shape = batch.x, batch.cond, batch.x.shape[1:]
        sig = self.sigmas.to(y.device)
        n = (len(sig) - 1) // 2
        i = (batch.rand() * n).long().clamp(max=n - 1)
        s_a, s_b, s_c = sig[2 * i], sig[2 * i + 1], sig[2 * i + 2]
        x_a = y + append_dims(s_a, y.ndim) * batch.randn(*shape)
        with torch.no_grad():
            target = ode_step(self.teacher, ode_step(self.teacher, x_a, s_a, s_b, labels, self.solver),
                              s_b, s_c, labels, self.solver)
        d = self.modules["student"](x_a, s_a, labels)
        r = append_dims(s_c / s_a, y.ndim)
        x_c = d + r * (x_a - d)  # one DDIM step
        s = torch.maximum(edm_sigma(batch), s_c)
        real = _renoise(target, s_c, s, batch.randn(*shape))
        fake = _renoise(x_c, s_c, s, batch.randn(*shape))
        disc, t, start = self.modules["disc"], self.backbone, (x_a, s_a)
        student_loss = -disc(t, fake, s, labels, start=start).mean()
        if self.distill_weight:  # the same regression as a progressive round: the clean estimate that lands there
            weight = append_dims(edm_weight(s_a, self.sigma_data), y.ndim)
            d_star = (target - r * x_a) / (1 - r)
            student_loss = student_loss + self.distill_weight * sum_sq(weight * (d - d_star) ** 2)
        return {"student": student_loss, "disc": self.critic_loss(batch, real, fake, s, start)}


def _discriminator(ctx, paired: bool = False) -> Discriminator:
    """Fresh heads on the teacher's own network (seeded), on the run's device."""
    torch.manual_seed(ctx.cfg.seed + 1)
    teacher = ctx.teacher
    return Discriminator(teacher.denoiser, tuple(teacher.info.shape), teacher.info.num_classes, paired,
                         example=ctx.example_condition()).to(ctx.device)


def run_add(ctx) -> list[Path]:
    """Train one ADD student on the sigmas of the most requested steps; it samples at every requested step count."""
    items, conditions = ctx.train_items(), ctx.train_conditions()
    sigmas = ctx.student_schedule(ctx.steps[-1])[:-1]
    method = AdversarialDistillation(ctx.make_student(), ctx.guided_teacher(), ctx.teacher.denoiser, sigmas,
                                     _discriminator(ctx), ctx.options.adv_distill_weight, ctx.options.adv_r1_gamma,
                                     ctx.options.adv_disc_lr_scale)
    trained = ctx.train(method, "train", items, conditions, "consistency")["student"]
    if not ctx.finished():
        return []
    return [ctx.export(trained, "model", "consistency", ctx.steps, "add")]


def run_lightning(ctx) -> list[Path]:
    """Rounds from --pd-start-steps down to the fewest wanted; every wanted step count exported as model-<N>step."""
    items, conditions = ctx.train_items(), ctx.train_conditions()
    teacher, solver = ctx.guided_teacher(), ctx.cfg.solver
    student, exported = ctx.make_student(), []
    todo = rounds(ctx.options.pd_start_steps, ctx.steps)
    for i, n in enumerate(todo, 1):
        sigmas = ctx.student_schedule(2 * n)
        method = LightningRound(student, teacher, ctx.teacher.denoiser, sigmas, _discriminator(ctx, paired=True),
                                solver, ctx.options.adv_distill_weight, ctx.options.adv_r1_gamma,
                                ctx.options.adv_disc_lr_scale)
        trained = ctx.train(method, f"round-{n:03d}", items, conditions, "euler", n,
                            round_label(i, len(todo), n))["student"]
        if not ctx.finished():
            return exported
        if n in ctx.steps:
            exported.append(ctx.export(trained, f"model-{n}step", "euler", [n], "lightning"))
        teacher = copy.deepcopy(trained).eval().requires_grad_(False)
        student, solver = ctx.trainable(copy.deepcopy(trained)), "euler"
    exported.append(ctx.export(trained, "model", "euler", [n], "lightning"))
    return exported
