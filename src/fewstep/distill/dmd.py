"""Distribution matching distillation, DMD2 (Yin et al. 2024): a few-step generator trained with the difference of
the teacher's ("real") and an online "fake" score at its own noised samples; no regression to teacher outputs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.config import option
from fewstep.core import cond as conds
from fewstep.core.cond import CondLike
from fewstep.core.denoiser import append_dims
from fewstep.distill.discriminator import Discriminator
from fewstep.distill.lora import merged
from fewstep.data.batches import Batch
from fewstep.train.edm import edm_sigma, edm_weight

GAN_FAKE_WEIGHT = 1e-2  # the GAN classifier's weight in the fake score's loss (DMD2's guidance_cls_loss_weight)
REGRESSION_STEPS = 18  # the teacher's ODE steps per regression pair (the Karras grid of reflow's default)


@dataclass
class DMD2Options:
    """DMD2's two time-scale updates and GAN term."""

    dmd_fake_updates: int = option(5, "dmd2: fake-score updates per generator update (two time-scale rule)")
    dmd_fake_lr_scale: float = option(1.0, "dmd2: the fake score's learning rate / the generator's (two time-scale "
                                           "rule)", above=0.0)
    dmd_gan_weight: float = option(3e-3, "dmd2: weight of the GAN term on the fake score's features (0 = none, "
                                         "data-free; DMD2's ImageNet-64 value: on smaller items it weighs less, "
                                         "0.5-5 is what works on 8x8 digits)")
    dmd_regression_weight: float = option(0.0, "dmd2: weight of DMD's regression of the first generator step to "
                                               "the teacher's ODE samples of the same noise (0 = none)", at_least=0.0)
    dmd_regression_pairs: int = option(8192, "dmd2: (noise, teacher sample) pairs of the regression term, "
                                             "generated once (cached like reflow's)", at_least=1)
    dmd_normaliser_floor: float = option(0.0, "dmd2: each sample's normaliser mean|x - D_real| is at least this "
                                              "fraction of the batch's median (0 = DMD's, none)", at_least=0.0)

    PRESETS: ClassVar[dict] = {}


class FakeScore(nn.Module):
    """The online fake score network; with DMD2's GAN term, classifier heads on its own features."""

    def __init__(self, start: nn.Module, shape: tuple[int, ...], num_classes: int, gan: bool,
                 example: CondLike = None):
        super().__init__()
        self.score = merged(start).requires_grad_(True)  # a full network, also when `start` carries LoRA adapters
        self.heads = Discriminator(self.score, shape, num_classes, example=example) if gan else None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fake score's denoised estimate and, with the GAN term, the heads' logits: one pass of the network
        (the fake score's only call with gradients in a step, as DistributedDataParallel requires)."""
        if self.heads is None:
            return self.score(x, sigma, labels), None
        return self.heads.denoise_and_judge(self.score, x, sigma, labels)

    def logits(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The heads' logits alone (the network stops after the last layer they read)."""
        return self.heads(self.score, x, sigma, labels)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Gradients flow through `module` to its inputs but not into its parameters."""
    wanted = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, w in zip(module.parameters(), wanted):
            p.requires_grad_(w)


def generate(generator: nn.Module, sigmas: torch.Tensor, batch: Batch,
             extra: tuple[torch.Tensor, torch.Tensor, CondLike] | None = None) -> torch.Tensor:
    """A generator's samples for this batch. A multistep generator trains on its own backward simulation (DMD2 sec.
    4.5): from noise, k steps of predict-clean / re-noise along `sigmas` without gradient, then the trained step.
    `extra` rows (x, sigma, cond) join the trained step's pass (one pass with gradients, as DDP requires) and their
    outputs follow the batch's rows."""
    labels, shape = batch.cond, batch.x.shape[1:]
    sig = sigmas.to(batch.x.device)
    k = int(torch.rand(1, generator=batch.generator) * (len(sig) - 1))  # the student step this batch trains
    x = batch.randn(*shape) * sig[0]
    with torch.no_grad():
        for i in range(k):
            x = generator(x, sig[i].expand(len(x)), labels) + sig[i + 1] * batch.randn(*shape)
    sigma = sig[k].expand(len(x))
    if extra is None:
        return generator(x, sigma, labels)
    x_e, sigma_e, cond_e = extra
    both = None if labels is None else conds.concat(labels, cond_e)
    return generator(torch.cat([x, x_e]), torch.cat([sigma, sigma_e]), both)


def noised(x: torch.Tensor, batch: Batch, sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x + sigma n at EDM's training noise levels (or the given ones), and the sigmas."""
    sigma = edm_sigma(batch) if sigma is None else sigma
    return x + append_dims(sigma, x.ndim) * batch.randn(*x.shape[1:]), sigma


def fake_score_loss(fake: Callable[..., torch.Tensor], x: torch.Tensor, batch: Batch,
                    sigma_data: float) -> torch.Tensor:
    """The fake score's EDM denoising loss on the generator's (detached) samples: it learns their score."""
    x_f, sigma_f = noised(x.detach(), batch)
    weight = edm_weight(append_dims(sigma_f, x.ndim), sigma_data)
    return (weight * (fake(x_f, sigma_f, batch.cond) - x.detach()) ** 2).mean()


@dataclass
class Regression:
    """DMD's regression term: the generator's first step from noise z (scaled by the top sigma) should land on the
    teacher's ODE sample y of the same z; a batch of pairs drawn by the step's generator (resume stays exact)."""

    noise: torch.Tensor
    samples: torch.Tensor
    conditions: torch.Tensor | list[str] | None
    condition: Callable[[torch.Tensor | list[str] | None], CondLike]  # pairs' conditions -> what the networks take
    weight: float

    def rows(self, sigma_max: torch.Tensor, batch: Batch
             ) -> tuple[tuple[torch.Tensor, torch.Tensor, CondLike], torch.Tensor]:
        """A batch of pairs: the generator's inputs (x, sigma, cond) and their targets."""
        idx = (batch.rand() * len(self.noise)).long().clamp(max=len(self.noise) - 1).cpu()  # the pairs stay on the cpu
        device = batch.x.device
        picked = None if self.conditions is None else (
            [self.conditions[i] for i in idx.tolist()] if isinstance(self.conditions, list)
            else self.conditions[idx].to(device))
        sigma = sigma_max.to(device)
        return ((self.noise[idx].to(device) * sigma, sigma.expand(len(idx)), self.condition(picked)),
                self.samples[idx].to(device))


class DMD2:
    """Two networks, two optimisers. Generator loss (DMD eq. 7, DMD2 code's normalisation):
    g = (D_fake(x_s) - D_real(x_s)) / mean|x - D_real(x_s)|, loss = 1/2 ||x - sg(x - g)||^2, x_s = x + s n.
    Fake score loss: EDM denoising loss on the generator's detached samples. The generator steps once every
    `fake_updates` steps (DMD2's two time-scale update rule), the fake score every step; on the other steps the
    generator's loss is not computed at all.

    DMD2's GAN term (`gan_weight` > 0): classifier heads on the fake score network's features tell noised data from
    noised generator samples (non-saturating loss, weight `gan_weight` in the generator's loss and 1e-2 in the fake
    score's, DMD2's ImageNet setting). Multistep generators train on their own backward simulation (`generate`).
    """

    def __init__(self, generator: nn.Module, teacher: nn.Module, sigmas: torch.Tensor, fake_updates: int = 5,
                 gan_weight: float = 0.0, shape: tuple[int, ...] = (), num_classes: int = 0,
                 example: CondLike = None, dm_sigma: Callable[[Batch], torch.Tensor] = edm_sigma,
                 fake_lr_scale: float = 1.0, regression: Regression | None = None, normaliser_floor: float = 0.0,
                 fake_start: nn.Module | None = None):
        # unwrapped, for the generator's turn; a copy of `fake_start` (the teacher), else of the generator
        self.fake = FakeScore(generator if fake_start is None else fake_start, shape, num_classes, gan_weight > 0,
                              example)
        self.modules = {"generator": generator, "fake": self.fake}
        self.ema_modules = ("generator",)
        self.update_every, self.lr_scale = {"generator": fake_updates}, {"fake": fake_lr_scale}
        self.teacher, self.sigmas, self.gan_weight = teacher, sigmas.float(), gan_weight
        self.sigma_data, self.dm_sigma, self.regression = generator.sigma_data, dm_sigma, regression
        self.normaliser_floor = normaliser_floor

    @torch.no_grad()
    def dm_gradient(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """DMD's gradient at the generator's samples: (D_fake - D_real)(x_s) / mean|x - D_real(x_s)|, x_s = x + s n."""
        x_s, sigma = noised(x, batch, self.dm_sigma(batch))
        real = self.teacher(x_s, sigma, batch.cond)
        return (self.fake(x_s, sigma, batch.cond)[0] - real) / self.normaliser(x, real)

    def normaliser(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Each sample's mean |x - D_real| (DMD's), at least normaliser_floor x the batch's median, broadcastable
        over x. In few dimensions one sample's mean can be tiny and its gradient then swamps the batch's."""
        weight = (x - real).abs().flatten(1).mean(1)
        if self.normaliser_floor:
            weight = torch.maximum(weight, self.normaliser_floor * weight.median())
        return append_dims(weight.clamp(min=1e-8), x.ndim)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        train_generator = batch.step % self.update_every["generator"] == 0
        labels = batch.cond
        pairs = self.regression.rows(self.sigmas[0], batch) if train_generator and self.regression else None
        with torch.set_grad_enabled(train_generator):
            x = generate(self.modules["generator"], self.sigmas, batch, pairs and pairs[0])
        if pairs:
            x, fitted = x[:len(batch.x)], x[len(batch.x):]
        out = {}
        if train_generator:
            grad = self.dm_gradient(x.detach(), batch)
            out["generator"] = 0.5 * ((x - (x - grad).detach()) ** 2).mean()
            if self.gan_weight:
                x_g, sigma_g = noised(x, batch)
                with frozen(self.fake):
                    gan = F.softplus(-self.fake.logits(x_g, sigma_g, labels)).mean()
                out["generator"] = out["generator"] + self.gan_weight * gan
            if pairs:
                out["generator"] = out["generator"] + self.regression.weight * ((fitted - pairs[1]) ** 2).mean()
        if not self.gan_weight:
            out["fake"] = fake_score_loss(lambda *a: self.modules["fake"](*a)[0], x, batch, self.sigma_data)
            return out
        x_fake, sigma_f = noised(x.detach(), batch)
        weight = edm_weight(append_dims(sigma_f, x.ndim), self.sigma_data)
        x_real, sigma_r = noised(batch.x, batch)
        n = len(x_fake)
        both = None if labels is None else conds.concat(labels, labels)
        denoised, logits = self.modules["fake"](torch.cat([x_fake, x_real]), torch.cat([sigma_f, sigma_r]), both)
        cls = F.softplus(logits[:n]).mean() + F.softplus(-logits[n:]).mean()
        out["fake"] = (weight * (denoised[:n] - x.detach()) ** 2).mean() + GAN_FAKE_WEIGHT * cls
        return out


def train_generator(ctx, method, name: str, needs_data: bool) -> list[Path]:
    """Train a distribution-matching generator (data only where the method or class labels need it; a text teacher
    data-free on its prompts) and export it as out/model, sampled like a consistency model on its own sigmas."""
    info = ctx.teacher.info
    if ctx.text and not needs_data:  # no real items: one placeholder row per prompt
        conditions = ctx.prompt_pool()
        items = torch.zeros(1, *info.shape).expand(len(conditions), *info.shape)
    elif info.num_classes or needs_data or ctx.data is not None:
        items, conditions = ctx.train_items(), ctx.train_conditions()
    else:
        items, conditions = torch.zeros(1, *info.shape), None
    trained = ctx.train(method, "train", items, conditions, "consistency")["generator"]
    if not ctx.finished():
        return []
    return [ctx.export(trained, "model", "consistency", ctx.steps, name)]


def run(ctx) -> list[Path]:
    """Train a DMD2 generator for the most requested steps."""
    opts, info = ctx.options, ctx.teacher.info
    sigmas = ctx.student_schedule(ctx.steps[-1])[:-1]
    regression = None
    if opts.dmd_regression_weight:
        from fewstep.distill.reflow import teacher_pairs

        conditions = ctx.generation_conditions(opts.dmd_regression_pairs)
        noise, samples, seconds = teacher_pairs(ctx, opts.dmd_regression_pairs, conditions, REGRESSION_STEPS)
        ctx.seconds += seconds
        regression = Regression(noise, samples, conditions, ctx.condition, opts.dmd_regression_weight)
    method = DMD2(ctx.make_student(), ctx.guided_teacher(), sigmas, opts.dmd_fake_updates, opts.dmd_gan_weight,
                  tuple(info.shape), info.num_classes, ctx.example_condition(), fake_lr_scale=opts.dmd_fake_lr_scale,
                  regression=regression, normaliser_floor=opts.dmd_normaliser_floor, fake_start=ctx.teacher.denoiser)
    return train_generator(ctx, method, "dmd2", needs_data=opts.dmd_gan_weight > 0)
