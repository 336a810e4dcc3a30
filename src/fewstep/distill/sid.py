"""Score identity Distillation, SiD (Zhou et al. 2024): a data-free one-step generator trained through the score
identity, with the teacher's score and an online fake score evaluated at the generator's own noised samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fewstep.config import option
from fewstep.core.denoiser import SigmaRange
from fewstep.core.errors import UserError
from fewstep.data.batches import Batch
from fewstep.distill.dmd import fake_score_loss, frozen, generate, noised, train_generator
from fewstep.distill.lora import merged


@dataclass
class SiDOptions:
    """SiD's alpha, its noise levels and the fake score's update rate."""

    sid_alpha: float = option(1.2, "sid: alpha of the score-identity loss (1.2 in the paper; 0 = the plain "
                                   "Fisher-divergence estimate)", at_least=0.0)
    sid_tmax: float = option(0.8, "sid: the generator's noise levels span the lowest tmax of the Karras ramp "
                                  "(0.8 in the paper)", above=0.0, at_most=1.0)
    sid_fake_updates: int = option(1, "sid: fake-score updates per generator update", at_least=1)
    sid_init_sigma: float = option(0.0, "sid: the generator's input noise level, its first sigma (the paper's "
                                        "init_sigma, 2.5 on EDM teachers); 0 = the teacher's sigma_max",
                                   at_least=0.0)
    sid_adam_beta1: float = option(0.0, "sid: Adam's beta1 for the generator and the fake score (0 in SiD's code; "
                                        "fewstep's other methods use 0.9)", at_least=0.0, at_most=0.99)

    PRESETS: ClassVar[dict] = {}


def karras_sigma(u: torch.Tensor, sigma_range: SigmaRange, rho: float = 7.0) -> torch.Tensor:
    """The Karras ramp at position u in [0, 1] (0: sigma_max, 1: sigma_min)."""
    hi, lo = sigma_range.sigma_max ** (1 / rho), sigma_range.sigma_min ** (1 / rho)
    return (hi + u * (lo - hi)) ** rho


def sid_generator_loss(x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's generator loss (Zhou et al. 2024, eq. 23, the official code's normalisation):
    (D_real - D_fake) . ((D_real - x) - alpha (D_real - D_fake)) / mean|x - D_real|, per sample, averaged.
    Gradients reach x directly and through x_t inside both (frozen) denoisers."""
    weight = (x - real).abs().flatten(1).mean(1).clamp(min=1e-5).detach()
    diff = real - fake
    return ((diff * ((real - x) - alpha * diff)).flatten(1).mean(1) / weight).mean()


class SiD:
    """Two networks, two optimisers: the generator (one step from sigmas[0], or multistep by backward simulation)
    and the fake score, initialised from the teacher and trained on the generator's detached samples; both Adams
    with `beta1` (0: without momentum, as SiD's code trains them)."""

    def __init__(self, generator: nn.Module, teacher: nn.Module, sigmas: torch.Tensor, alpha: float = 1.2,
                 tmax: float = 0.8, fake_updates: int = 1, beta1: float = 0.0, fake_start: nn.Module | None = None):
        # unwrapped, for the generator's turn; a full copy of `fake_start` (the teacher), else of the generator
        self.fake = merged(generator if fake_start is None else fake_start).requires_grad_(True)
        self.modules = {"generator": generator, "fake": self.fake}
        self.ema_modules = ("generator",)
        self.update_every = {"generator": fake_updates}
        self.adam_betas = {"generator": (beta1, 0.999), "fake": (beta1, 0.999)}
        self.teacher, self.sigmas, self.alpha, self.tmax = teacher, sigmas.float(), alpha, tmax
        self.sigma_data, self.sigma_range = generator.sigma_data, generator.sigma_range

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        train_generator = batch.step % self.update_every["generator"] == 0
        with torch.set_grad_enabled(train_generator):
            x = generate(self.modules["generator"], self.sigmas, batch)
        out = {}
        if train_generator:
            u = 1 - self.tmax * batch.rand()
            x_t, sigma = noised(x, batch, karras_sigma(u, self.sigma_range).to(x.device))
            with frozen(self.fake):
                real, fake = self.teacher(x_t, sigma, batch.cond), self.fake(x_t, sigma, batch.cond)
            out["generator"] = sid_generator_loss(x, real, fake, self.alpha)
        out["fake"] = fake_score_loss(self.modules["fake"], x, batch, self.sigma_data)
        return out


def run(ctx) -> list[Path]:
    """Train a SiD generator for the most requested steps (data-free: data only for class labels)."""
    opts = ctx.options
    if opts.sid_init_sigma:
        rng = ctx.sigma_range
        if ctx.vp_unet:
            raise UserError("--sid-init-sigma: a diffusers VP teacher's students start from its own timesteps; "
                            "drop the flag")
        if not rng.sigma_min < opts.sid_init_sigma <= rng.sigma_max:
            raise UserError(f"--sid-init-sigma must lie in ({rng.sigma_min:g}, {rng.sigma_max:g}], the teacher's "
                            f"noise levels; got {opts.sid_init_sigma:g}")
        ctx.top_sigma = opts.sid_init_sigma
    method = SiD(ctx.make_student(), ctx.guided_teacher(), ctx.student_schedule(ctx.steps[-1])[:-1],
                 opts.sid_alpha, opts.sid_tmax, opts.sid_fake_updates, opts.sid_adam_beta1, ctx.teacher.denoiser)
    return train_generator(ctx, method, "sid", needs_data=False)
