"""Rectified flow / reflow (Liu et al. 2023; InstaFlow): pair noise with the teacher's ODE samples once, then train
a student whose paths between each pair are straight, so few Euler steps follow them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fewstep.config import option
from fewstep.core.denoiser import append_dims
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.metrics.cache import cache_path, settings_hash, write_atomically
from fewstep.models.io import model_hash
from fewstep.samplers import generate
from fewstep.data.batches import Batch
from fewstep.train.edm import edm_weight

PAIR_SEED_OFFSET = 1_000_003  # pairs never reuse the evaluation seeds' noise
PAIR_CHUNK = 512  # pairs per progress update


@dataclass
class ReflowOptions:
    """How many teacher pairs reflow trains on, and how they are solved."""

    reflow_pairs: int = option(8192, "reflow: number of (noise, teacher sample) pairs, generated once")
    reflow_solver_steps: int = option(18, "reflow: teacher ODE steps per pair")

    PRESETS: ClassVar[dict] = {
        ("tiny", "image"): {"reflow_pairs": 32, "reflow_solver_steps": 6},
        ("tiny", "vector"): {"reflow_pairs": 256, "reflow_solver_steps": 6},
        ("small", "vector"): {"reflow_pairs": 32768},
        ("base", "image"): {"reflow_pairs": 100_000}, ("base", "vector"): {"reflow_pairs": 200_000}}


def teacher_pairs(ctx, n: int, conditions: torch.Tensor | list[str] | None, steps: int
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(unit noise z, teacher ODE sample y, seconds it took) for n seeds and `steps` teacher ODE steps, generated once
    and cached on disk.

    `conditions` are the pairs' class labels or prompts. The key holds the teacher's hash, solver, steps, guidance,
    seed range and conditions, so changed settings never reuse pairs; the cost recorded at generation is reported
    again when the cache is reused.
    """
    cfg, teacher = ctx.cfg, ctx.teacher
    seed = cfg.seed + PAIR_SEED_OFFSET
    settings = {"model": model_hash(teacher.path), "solver": cfg.solver, "steps": steps,
                "schedule": "karras", "cfg_scale": cfg.cfg_scale, "seed": seed, "n": n,
                "labels": ctx.conditions_digest(conditions)}
    path = cache_path("pairs", teacher.path.name, settings_hash(settings), ".safetensors")
    shape = teacher.info.shape
    noise = SampleNoise(seed, range(n)).randn(shape)  # the same unit noise initial_latents scales by sigma_max
    if path.exists():
        with safe_open(path, "pt") as f:
            return noise, f.get_tensor("samples"), float(f.metadata()["seconds"])
    start = time.perf_counter()
    sigmas = make_schedule("karras", steps, ctx.sigma_range)
    from tqdm.auto import tqdm

    teacher_denoiser, chunks = ctx.guided_teacher(), []
    for lo in tqdm(range(0, n, PAIR_CHUNK), desc="teacher pairs", unit_scale=PAIR_CHUNK, mininterval=10.0):
        hi = min(lo + PAIR_CHUNK, n)
        chunks.append(generate(teacher_denoiser, shape, hi - lo, sigmas, cfg.solver, seed,
                               None if conditions is None else ctx.condition(conditions[lo:hi]), 256, ctx.device,
                               indices=range(lo, hi)).samples)
    samples = torch.cat(chunks)
    seconds = time.perf_counter() - start
    write_atomically(path, lambda tmp: save_file({"samples": samples.contiguous()}, tmp,
                                                 metadata={"settings": json.dumps(settings),
                                                           "seconds": f"{seconds:.2f}"}))
    return noise, samples, seconds


class Reflow:
    """Train D(y + s z, s) -> y on coupled pairs (z, y): in sigma space x_s = y + s z is the straight path, and an
    Euler step dx/ds = (x - D) / s = z follows it exactly when D is right (rectified flow with t = s / (1 + s)).

    Half the rows take t ~ U(0, t_max) (rectified flow's uniform time), half sit at the sigmas the student samples
    at, where its few Euler steps evaluate it. The weight is EDM's lambda(s) = (s^2 + sd^2) / (s sd)^2.
    """

    def __init__(self, student: nn.Module, sample_sigmas: torch.Tensor):
        self.modules = {"student": student}
        self.ema_modules = ("student",)
        self.sample_sigmas = sample_sigmas.float()
        self.sigma_data, self.sigma_max = student.sigma_data, student.sigma_range.sigma_max

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        z, y, labels = batch.x[:, 0], batch.x[:, 1], batch.cond
        t_max = self.sigma_max / (1 + self.sigma_max)
        t = batch.rand() * t_max
        pick = self.sample_sigmas.to(y.device)[(batch.rand() * len(self.sample_sigmas)).long()]
        sigma = torch.where(batch.rand() < 0.5, t / (1 - t), pick).clamp(min=1e-3)
        s = append_dims(sigma, y.ndim)
        weight = edm_weight(s, self.sigma_data)
        return {"student": (weight * (self.modules["student"](y + s * z, sigma, labels) - y) ** 2).mean()}


def run(ctx) -> list[Path]:
    """Generate (or reuse) the pairs, train the straight-flow student, export it as out/model (Euler sampling)."""
    n = ctx.options.reflow_pairs
    conditions = ctx.generation_conditions(n)
    noise, samples, seconds = teacher_pairs(ctx, n, conditions, ctx.options.reflow_solver_steps)
    ctx.seconds += seconds
    sample_sigmas = torch.cat([ctx.student_schedule(k)[:-1] for k in ctx.steps])
    trained = ctx.train(Reflow(ctx.make_student(), sample_sigmas), "train", torch.stack([noise, samples], 1),
                        conditions, "euler")["student"]
    if not ctx.finished():
        return []
    return [ctx.export(trained, "model", "euler", ctx.steps, "reflow")]
