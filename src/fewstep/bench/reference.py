"""The teacher's converged ODE solutions from the same initial noise, generated once and cached on disk."""

from __future__ import annotations

import json
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from fewstep.accel.adaptive_guidance import guided_denoiser
from fewstep.core.cond import Cond, CondLike
from fewstep.core.schedules import make_schedule
from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically
from fewstep.models.io import LoadedModel, model_hash
from fewstep.samplers import generate

REFERENCE_SAMPLER, REFERENCE_STEPS = "heun", 64  # 127 NFE: converged to well below the metrics' floors


def _digest(cond: CondLike) -> str:
    """A condition's bytes: class labels, or a Cond's tensors and its null condition's."""
    if not isinstance(cond, Cond):
        return tensor_digest(cond)
    parts = [cond, *([cond.negative] if cond.negative is not None else [])]
    return tensor_digest(*(t for c in parts for t in (c.labels, c.text, c.pooled, c.mask, *c.added.values())))


def converged_samples(teacher: LoadedModel, n: int, seed: int, labels: CondLike, batch_size: int = 256,
                      device: str = "cpu", cfg_scale: float = 1.0,
                      indices: Sequence[int] | None = None) -> torch.Tensor:
    """Samples 0..n-1 of `seed` (noise indices `indices` when given, as golden seeds pick them) solved with 64 Heun
    steps (Karras schedule), with classifier-free guidance at `cfg_scale` (text-to-image rows: the ODE an accelerated
    guided run approximates), cached by model hash and settings."""
    settings = {"model": model_hash(teacher.path), "sampler": REFERENCE_SAMPLER, "steps": REFERENCE_STEPS,
                "schedule": "karras", "seed": seed, "n": n, "labels": _digest(labels),
                **({"cfg_scale": cfg_scale} if cfg_scale != 1.0 else {}),
                **({"indices": tensor_digest(torch.as_tensor(list(indices)))} if indices is not None else {})}
    path = cache_path("trajectories", teacher.path.name, settings_hash(settings), ".safetensors")
    if path.exists():
        return load_file(path)["samples"]
    sigmas = make_schedule("karras", REFERENCE_STEPS, teacher.denoiser.sigma_range)
    samples = generate(guided_denoiser(teacher.denoiser, cfg_scale), teacher.info.shape, n, sigmas,
                       REFERENCE_SAMPLER, seed, labels, batch_size, device, indices).samples
    write_atomically(path, lambda tmp: save_file({"samples": samples.contiguous()}, tmp,
                                                 metadata={"settings": json.dumps(settings)}))
    return samples
