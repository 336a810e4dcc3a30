"""Sample a saved model: load, pick sampler and schedule, generate seeded samples, write a grid or scatter."""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep.accel import apply_accelerator, guided_denoiser, resolve_acceleration
from fewstep.accel.schedule_search import is_searched, load_schedule
from fewstep.core.errors import UserError
from fewstep.core.schedules import explicit, make_schedule
from fewstep.models.io import LoadedModel, load_model
from fewstep.samplers import SampleResult, generate


def schedule_for(model: LoadedModel, steps: int | None = None, schedule: str | None = None,
                 rho: float = 7.0) -> torch.Tensor:
    """The sigmas: a searched schedule file (it fixes the steps), a student's recorded sigmas, else the named one."""
    if is_searched(schedule):
        return explicit(load_schedule(schedule)["sigmas"])
    recorded = model.info.sampler
    if steps is None and schedule is None and recorded.get("sigmas"):
        return explicit(recorded["sigmas"])
    return make_schedule(schedule or recorded.get("schedule", "karras"), steps or recorded.get("steps", 18),
                         model.denoiser.sigma_range, rho=rho)


def sampler_for(model: LoadedModel, sampler: str | None = None, schedule: str | None = None) -> str:
    """The sampler to use: the given one, else the one a searched schedule was searched for, else the recorded one."""
    if sampler:
        return sampler
    return load_schedule(schedule)["sampler"] if is_searched(schedule) else model.info.sampler.get("name", "heun")


def sample_model(model_path: str | Path, n: int = 64, steps: int | None = None, sampler: str | None = None,
                 schedule: str | None = None, seed: int = 0, labels: torch.Tensor | None = None,
                 batch_size: int = 256, device: str = "cpu", cycle_classes: bool = False, cfg_scale: float = 1.0,
                 cfg_interval: tuple[float, float] | None = None, cache: str | None = None,
                 guidance: str | None = None) -> SampleResult:
    """Draw n samples from a model folder with its recorded (or the given) sampler, schedule and accelerators.

    `cycle_classes` labels sample i with class i mod C on a class-conditional model (ignored if unconditional).
    `cache` is an accelerator spec ('deepcache:interval=3'), `guidance` a guidance spec ('adaptive:threshold=0.995')
    on top of classifier-free guidance with `cfg_scale` and `cfg_interval`; settings left at their defaults take
    what an accelerated folder records ('none' turns a recorded cache or guidance off); see docs/acceleration.md.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    model = load_model(model_path, device)
    if labels is not None and not model.info.num_classes:
        raise UserError("--class-label given, but this model is unconditional")
    if labels is not None and ((labels < 0) | (labels >= model.info.num_classes)).any():
        raise UserError(f"class labels must lie in 0..{model.info.num_classes - 1}")
    if cycle_classes and labels is None and model.info.num_classes:
        labels = torch.arange(n) % model.info.num_classes
    sigmas = schedule_for(model, steps, schedule)
    accel = resolve_acceleration(model.info, cache, guidance, cfg_scale, cfg_interval)
    denoiser = guided_denoiser(model.denoiser, accel.cfg_scale, accel.cfg_interval, accel.guidance)
    handle = apply_accelerator(model, accel.cache or "none")
    try:
        return generate(denoiser, model.info.shape, n, sigmas, sampler_for(model, sampler, schedule), seed, labels,
                        batch_size, device)
    finally:
        handle.remove()
