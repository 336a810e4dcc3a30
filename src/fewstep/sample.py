"""Sample a saved model: load it, build its sampling plan, draw seeded samples (`fewstep sample`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fewstep.core.cond import Cond
from fewstep.core.errors import UserError
from fewstep.models.info import LoadedModel, prompt_cond
from fewstep.models.io import load_model
from fewstep.plan import PlanSettings, build_plan, sample
from fewstep.samplers import SampleResult


def class_labels(model: LoadedModel, n: int, label: int | None = None, cycle: bool = False) -> torch.Tensor | None:
    """Labels for n samples: all `label`, or 0..C-1 cycling (`cycle`), on a class-conditional model; else None."""
    classes = model.info.num_classes
    if label is not None:
        if model.prompt_encoder is not None:
            raise UserError("--class-label given, but this model is conditioned on text prompts; give --prompt TEXT "
                            "or --prompts FILE instead")
        if not classes:
            raise UserError("--class-label given, but this model is unconditional")
        if not 0 <= label < classes:
            raise UserError(f"class labels must lie in 0..{classes - 1}")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % classes if cycle and classes else None


MAX_SAMPLE_BYTES = 4 << 30  # samples are kept in memory (for the grid and --save-tensor): refuse more than this


def check_sample_memory(model: LoadedModel, n: int) -> None:
    """Refuse an n whose samples would not fit in memory (float32, decoded), before any compute."""
    import math

    size = 4 * n * math.prod(model.info.image_shape or model.info.shape or [1])
    if size > MAX_SAMPLE_BYTES:
        most = MAX_SAMPLE_BYTES // max(size // n, 1)
        raise UserError(f"--n {n} would keep {size / 2**30:.1f} GiB of samples in memory; use --n {most} or fewer "
                        "and draw more in separate runs with other --seed values")


def sample_cond(model: LoadedModel, n: int, cond: torch.Tensor | Cond | None = None,
                prompts: Sequence[str] | None = None, negative_prompt: str | None = None,
                cycle_classes: bool = False) -> torch.Tensor | Cond | None:
    """The condition of n samples: prompts[i mod len(prompts)] for sample i, else `cond`, else class i mod C
    (`cycle_classes`); a text-to-image model needs prompts."""
    if prompts is not None:
        return prompt_cond(model, prompts, n, negative_prompt)
    if negative_prompt is not None:
        raise UserError("a negative prompt needs prompts: pass --prompt TEXT or --prompts FILE as well")
    if cond is None:
        if model.prompt_encoder is not None:
            raise UserError("this model is conditioned on text prompts; give --prompt TEXT or --prompts FILE "
                            "(prompts=[...] in Python)")
        cond = class_labels(model, n, cycle=cycle_classes)
    return cond


def sample_model(model: str | Path | LoadedModel, n: int = 64, settings: PlanSettings | None = None, seed: int = 0,
                 cond: torch.Tensor | Cond | None = None, batch_size: int = 256, device: str = "cpu",
                 cycle_classes: bool = False, prompts: Sequence[str] | None = None,
                 negative_prompt: str | None = None, indices: Sequence[int] | None = None) -> SampleResult:
    """Draw n samples from a model folder with its recorded sampling plan, overridden by `settings`.

    `cond` conditions sample i on row i; `cycle_classes` labels sample i with class i mod C instead; `prompts`
    conditions sample i on prompts[i mod len(prompts)] (a text-to-image model, whose samples are latents:
    `model.decode` turns them into images). Sample i starts from noise index indices[i] of `seed` (default i; golden
    seeds: `fewstep.search.seeds.read_golden_seeds(path).indices(n)` with its seed).
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if settings is not None and settings.steps is not None and settings.steps < 1:
        raise UserError(f"--steps must be at least 1, got {settings.steps}")
    model = model if isinstance(model, LoadedModel) else load_model(model, device)
    check_sample_memory(model, n)
    cond = sample_cond(model, n, cond, prompts, negative_prompt, cycle_classes)
    return sample(model, build_plan(model, settings), n, seed, cond, batch_size, device, indices)
