"""Progressive distillation (Salimans & Ho 2022): rounds that halve the step count, one student step = two teacher steps."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fewstep.config import option
from fewstep.core.denoiser import append_dims
from fewstep.core.errors import UserError
from fewstep.samplers.ode import ode_step
from fewstep.data.batches import Batch
from fewstep.train.edm import edm_weight


@dataclass
class ProgressiveOptions:
    """Progressive distillation's rounds."""

    pd_start_steps: int = option(16, "progressive, lightning: student steps of the first round (its teacher takes "
                                     "twice as many); halved each round")

    PRESETS: ClassVar[dict] = {("tiny", "image"): {"pd_start_steps": 2}, ("tiny", "vector"): {"pd_start_steps": 2},
                               ("base", "image"): {"pd_start_steps": 64}, ("base", "vector"): {"pd_start_steps": 64}}


class ProgressiveRound:
    """One round (Salimans & Ho, Algorithm 2) in sigma space on the grid karras_trailing(2N).

    A student step sigma_a -> sigma_c stands for the teacher's steps sigma_a -> sigma_b -> sigma_c. The target is the
    clean estimate that makes one DDIM step land where the teacher did (their eq. 8 with x = y + sigma n):
    x_c = d + (sigma_c / sigma_a)(x_a - d)  =>  d* = (x_c - r x_a) / (1 - r), r = sigma_c / sigma_a.
    The loss weight lambda = (s^2 + sd^2) / (s sd)^2 is "SNR + 1" weighting (their section 4) in EDM's units.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, sigmas: torch.Tensor, solver: str = "euler"):
        self.modules = {"student": student}
        self.ema_modules = ("student",)
        self.teacher, self.sigmas, self.solver = teacher, sigmas.float(), solver
        self.sigma_data = student.sigma_data

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        y, labels = batch.x, batch.cond
        n = (len(self.sigmas) - 1) // 2  # student steps
        i = (batch.rand() * n).long().clamp(max=n - 1)
        sig = self.sigmas.to(y.device)
        s_a, s_b, s_c = sig[2 * i], sig[2 * i + 1], sig[2 * i + 2]
        x_a = y + append_dims(s_a, y.ndim) * batch.randn(*y.shape[1:])
        with torch.no_grad():
            x_b = ode_step(self.teacher, x_a, s_a, s_b, labels, self.solver)
            x_c = ode_step(self.teacher, x_b, s_b, s_c, labels, self.solver)
            r = append_dims(s_c / s_a, y.ndim)
            target = (x_c - r * x_a) / (1 - r)
        s = append_dims(s_a, y.ndim)
        weight = edm_weight(s, self.sigma_data)
        return {"student": (weight * (self.modules["student"](x_a, s_a, labels) - target) ** 2).mean()}


def rounds(start: int, wanted: list[int]) -> list[int]:
    """Student step counts of the rounds: start, start/2, ... down to the fewest wanted."""
    out = [start]
    while out[-1] > wanted[0] and out[-1] % 2 == 0:
        out.append(out[-1] // 2)
    missing = [n for n in wanted if n not in out]
    if missing:
        raise UserError(f"progressive distillation halves {start} steps each round: {out}; "
                        f"{missing} is not reachable; choose --pd-start-steps as a power-of-two multiple")
    return out


def round_label(i: int, count: int, n: int) -> str:
    """A round's progress-bar label: "round 2/5: 16 -> 8 steps"."""
    return f"round {i}/{count}: {2 * n} -> {n} steps"


def run(ctx) -> list[Path]:
    """Train the rounds; export every wanted step count as out/model-<N>step and the fewest as out/model."""
    items, conditions = ctx.train_items(), ctx.train_conditions()
    teacher, solver = ctx.guided_teacher(), ctx.cfg.solver  # the first round's teacher may take Heun steps
    student = ctx.make_student()
    exported = []
    todo = rounds(ctx.options.pd_start_steps, ctx.steps)
    for i, n in enumerate(todo, 1):
        sigmas = ctx.student_schedule(2 * n)
        trained = ctx.train(ProgressiveRound(student, teacher, sigmas, solver), f"round-{n:03d}", items,
                            conditions, "euler", n, round_label(i, len(todo), n))["student"]
        if not ctx.finished():
            return exported
        if n in ctx.steps:
            exported.append(ctx.export(trained, f"model-{n}step", "euler", [n], "progressive"))
        teacher = copy.deepcopy(trained).eval().requires_grad_(False)  # a student takes DDIM (Euler) steps
        student, solver = ctx.trainable(copy.deepcopy(trained)), "euler"
    exported.append(ctx.export(trained, "model", "euler", [n], "progressive"))
    return exported
