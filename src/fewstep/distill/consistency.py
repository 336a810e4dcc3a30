"""Consistency distillation (Song et al. 2023, Algorithm 2; LCM's skipping steps): any point of a teacher ODE
trajectory maps to the trajectory's end, with the boundary f(x, sigma_min) = x built into the parameterization."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from fewstep.config import option
from fewstep.core.denoiser import append_dims
from fewstep.core.errors import UserError
from fewstep.core.precond import ConsistencyBoundary
from fewstep.core.schedules import karras
from fewstep.samplers.ode import ode_step
from fewstep.data.batches import Batch

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES = ("l2", "huber", "feature")


def make_distance(name: str, data=None) -> Distance:
    """Per-row distance d(a, b): l2 (mean squared), huber (pseudo-Huber, Song & Dhariwal 2023 sec. 3.3) or feature
    (squared distance in the dataset classifier's feature space, the role LPIPS plays in the paper)."""
    if name == "l2":
        return lambda a, b: ((a - b) ** 2).flatten(1).mean(1)
    if name == "huber":
        def huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            c = 0.00054 * a[0].numel() ** 0.5  # improved CT's c for data in [-1, 1]
            return (((a - b) ** 2).flatten(1).sum(1) + c**2).sqrt() - c
        return huber
    if name == "feature":
        from fewstep.metrics.features import feature_network

        if data is None or data.kind != "image":
            raise UserError("--distance feature needs a labelled image dataset (its classifier's features)")
        net = feature_network(data)
        return lambda a, b: ((net.to(a.device).body(a) - net.body(b)) ** 2).mean(1)
    raise UserError(f"unknown --distance {name!r}; choose {', '.join(DISTANCES)}")


@dataclass
class ConsistencyOptions:
    """Consistency distillation's grid, target network, distance and boundary condition."""

    cd_grid: int = option(18, "consistency: number of Karras sigmas in the teacher's grid")
    cd_skip: int = option(1, "consistency: grid points skipped by one teacher step (LCM's skipping step)")
    cd_target_ema: float = option(0.95, "consistency: EMA decay of the target network (0 = the student without "
                                        "gradient)")
    distance: str = option("l2", "consistency: l2 | huber (pseudo-Huber) | feature (dataset classifier space)")
    boundary_scale: float = option(10.0, "consistency: time scaling of the boundary condition's c_skip / c_out")

    PRESETS: ClassVar[dict] = {("tiny", "image"): {"cd_grid": 8}, ("tiny", "vector"): {"cd_grid": 8},
                               ("base", "image"): {"cd_grid": 40}, ("base", "vector"): {"cd_grid": 40}}


class ConsistencyDistillation:
    """loss = d(f(x_hi, s_hi), f_target(x_lo, s_lo)), x_hi = y + s_hi z, x_lo = one teacher ODE step from x_hi.

    s_hi, s_lo are grid points k apart (LCM's skipping step) on the teacher's Karras grid; the target network is an
    EMA of the student with decay `target_ema` (0: the student itself without gradient, as improved CT recommends).
    """

    def __init__(self, student: ConsistencyBoundary, teacher: nn.Module, grid: torch.Tensor, skip: int,
                 solver: str, distance: Distance, target_ema: float):
        if not 1 <= skip < len(grid):
            raise UserError(f"--cd-skip must lie in 1..{len(grid) - 1} for a grid of {len(grid)} sigmas")
        self.modules = {"student": student}
        self.ema_modules = ("student",)
        self.target = copy.deepcopy(student).requires_grad_(False).eval()
        self.state_modules = {"target": self.target}
        self.teacher, self.grid, self.skip, self.solver = teacher, grid.float(), skip, solver
        self.distance, self.target_ema = distance, target_ema

    def to(self, device: torch.device) -> None:
        self.target.to(device)

    @torch.no_grad()
    def _update_target(self) -> None:
        student = self.modules["student"]
        student = getattr(student, "module", student)  # under DDP
        for p_t, p in zip(self.target.parameters(), student.parameters()):
            p_t.lerp_(p.detach(), 1 - self.target_ema)  # theta- <- mu theta- + (1 - mu) theta (Alg. 2, last line)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        self._update_target()
        y, labels = batch.x, batch.cond
        grid = self.grid.to(y.device)
        i = (batch.rand() * (len(grid) - self.skip)).long().clamp(max=len(grid) - self.skip - 1)
        s_hi, s_lo = grid[i], grid[i + self.skip]
        x_hi = y + append_dims(s_hi, y.ndim) * batch.randn(*y.shape[1:])
        with torch.no_grad():
            x_lo = ode_step(self.teacher, x_hi, s_hi, s_lo, labels, self.solver)
            target = self.target(x_lo, s_lo, labels)
        return {"student": self.distance(self.modules["student"](x_hi, s_hi, labels), target).mean()}


def run(ctx) -> list[Path]:
    """Train one consistency student and export it as out/model (multistep consistency sampling)."""
    cfg, opts, data = ctx.cfg, ctx.options, ctx.require_data()
    if ctx.text and opts.distance == "feature":
        raise UserError("--distance feature reads an image classifier's features; a text-to-image teacher's items are "
                        "latents: choose l2 or huber")
    rng = ctx.sigma_range
    if ctx.vp_unet:  # LCM's boundary in the teacher's timesteps, so diffusers' LCMScheduler samples the student
        student = ctx.make_student()
        student.boundary_scaling = opts.boundary_scale
    else:
        student = ConsistencyBoundary(ctx.make_student(), rng.sigma_min, opts.boundary_scale)
    grid = karras(opts.cd_grid, rng.sigma_min, rng.sigma_max)[:-1]
    method = ConsistencyDistillation(student, ctx.guided_teacher(), grid, opts.cd_skip, cfg.solver,
                                     make_distance(opts.distance, data), opts.cd_target_ema)
    trained = ctx.train(method, "train", ctx.train_items(), ctx.train_conditions(), "consistency")["student"]
    if not ctx.finished():
        return []
    boundary = None if ctx.vp_unet else {"sigma_min": rng.sigma_min, "scale": opts.boundary_scale}
    return [ctx.export(trained, "model", "consistency", ctx.steps, "consistency", consistency=boundary)]
