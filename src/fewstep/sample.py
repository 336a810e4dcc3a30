"""Sample a saved model: load, pick sampler and schedule, generate seeded samples, write a grid or scatter."""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep.core.errors import UserError
from fewstep.core.schedules import explicit, make_schedule
from fewstep.models.io import LoadedModel, load_model
from fewstep.samplers import SampleResult, generate


def schedule_for(model: LoadedModel, steps: int | None = None, schedule: str | None = None,
                 rho: float = 7.0) -> torch.Tensor:
    """The sigmas to sample with: explicit sigmas recorded for a student, else the named schedule."""
    recorded = model.info.sampler
    if steps is None and schedule is None and recorded.get("sigmas"):
        return explicit(recorded["sigmas"])
    return make_schedule(schedule or recorded.get("schedule", "karras"), steps or recorded.get("steps", 18),
                         model.denoiser.sigma_range, rho=rho)


def sample_model(model_path: str | Path, n: int = 64, steps: int | None = None, sampler: str | None = None,
                 schedule: str | None = None, seed: int = 0, labels: torch.Tensor | None = None,
                 batch_size: int = 256, device: str = "cpu", cycle_classes: bool = False) -> SampleResult:
    """Draw n samples from a model folder with its recorded (or the given) sampler and schedule.

    `cycle_classes` labels sample i with class i mod C on a class-conditional model (ignored if unconditional).
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
    shape = model.info.shape
    return generate(model.denoiser, shape, n, sigmas, sampler or model.info.sampler.get("name", "heun"), seed, labels,
                    batch_size, device)
