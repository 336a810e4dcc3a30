"""Search a sigma schedule for one model, sampler and step count against the ruler's quality on held-out seeds.

The schedule's knots are log sigma_1 .. log sigma_{K-1} (sigma_0 = sigma_max stays, a final 0 is appended); the
search starts from Karras's rho = 7 schedule and is a coordinate (pattern) search: each knot tries +-step, a move is
kept when it lowers the objective, and the step halves after a sweep without one. The objective is the ruler's
headline metric on samples of the held-out noise seed SEARCH_SEED (the ruler samples seed 0): sliced W2 against
fresh draws of a 2-D law, or FD against real images the ruler's FD does not use (its floor's held-out half); for a
text-to-image model, on decoded samples of a prompt set, FD against renders of the same captions, or the RMSE to
the model's converged guided ODE for prompts without reference data (text_objective).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from fewstep.accel.adaptive_guidance import guided_denoiser
from fewstep.core.cond import Cond
from fewstep.core.denoiser import Denoiser
from fewstep.core.errors import UserError
from fewstep.core.schedules import append_zero, make_schedule
from fewstep.data import Dataset, load_recorded
from fewstep.data.captions import caption_attributes, render
from fewstep.data.prompts import fit_prompts
from fewstep.metrics import captions, feature_network, frechet_distance, real_split, reference_features, \
    sliced_wasserstein2
from fewstep.metrics.agreement import rmse
from fewstep.metrics.captions import attribute_network, ruler_images, ruler_resolution
from fewstep.metrics.image import real_images
from fewstep.metrics.toy import fresh_samples
from fewstep.models.info import LoadedModel, default_cfg_scale, image_size, prompt_cond
from fewstep.models.io import load_model, model_hash
from fewstep.samplers import generate

SEARCH_SEED = 1000  # noise seeds of the search's samples
SEARCH_REFERENCE_SEED = 2001  # fresh 2-D draws, distinct from the ruler's reference (1001) and floor (1002) draws

Objective = Callable[[torch.Tensor], float]


def held_out_objective(data: Dataset, n: int) -> tuple[str, Objective]:
    """The quality to minimise and its name: sw2 for 2-D data, fd for images, against held-out real data."""
    if data.kind == "vector":
        if data.sampler is not None:
            reference = fresh_samples(data, n, SEARCH_REFERENCE_SEED)
        else:
            pool = real_images(data)[0]
            reference = pool[real_split(len(pool), n).held_out]
        return "sw2", lambda samples: sliced_wasserstein2(samples, reference)
    net = feature_network(data)
    held_out = real_split(len(real_images(data)[0]), n).held_out
    reference = reference_features(data, net)[held_out]
    return "fd", lambda samples: frechet_distance(net.features(samples), reference)


def text_objective(model: LoadedModel, denoiser: Denoiser, n: int, prompts: str | None, dataset: str | None,
                   seed: int, batch_size: int, device: str) -> tuple[str, Objective, Cond, str]:
    """A text-to-image model's quality to minimise on decoded samples, the prompts' condition and the prompt set:
    captions prompts: FD in the attribute network's features against renders of the same captions at a render
    seed the ruler does not use; other prompts: RMSE to the model's own converged guided ODE (64 Heun steps)."""
    chosen = fit_prompts(prompts, dataset or model.info.dataset or "", n)
    cond = prompt_cond(model, chosen.prompts, n)
    if chosen.split is not None:
        net = attribute_network(ruler_resolution(model.info.image_shape[-1]), captions.RULER_CONFIG)
        reference = net.features(render(caption_attributes(chosen.prompts), net.input_shape[-1], SEARCH_REFERENCE_SEED))
        return "fd", lambda images: frechet_distance(net.features(ruler_images(images)), reference), cond, chosen.name
    sigmas = make_schedule("karras", 64, model.denoiser.sigma_range).to(device)  # the ruler's converged reference
    converged = generate(denoiser, model.info.shape, n, sigmas, "heun", seed, cond, batch_size, device).samples
    reference = model.decode(converged, batch_size)
    return "agreement_rmse", lambda images: rmse(images, reference), cond, chosen.name


def coordinate_search(objective: Callable[[torch.Tensor], float], knots: torch.Tensor, lowest: float,
                      max_evaluations: int, step: float = 2.0, min_step: float = 0.01) -> tuple[torch.Tensor, float]:
    """Minimise objective(knots) over knots[1:], kept strictly decreasing and >= lowest; the best knots and value."""
    best, best_value, evaluations = knots.clone(), objective(knots), 1
    while step >= min_step and evaluations < max_evaluations:
        improved = False
        for i in range(1, len(best)):
            for move in (step, -step):
                trial = best.clone()
                trial[i] += move
                if trial[-1] < lowest or (trial[1:] >= trial[:-1]).any() or evaluations >= max_evaluations:
                    continue
                value, evaluations = objective(trial), evaluations + 1
                if value < best_value:
                    best, best_value, improved = trial, value, True
                    break
        step = step if improved else step / 2
    return best, best_value


def search_schedule(model_path: str | Path, sampler: str, steps: int, n: int = 1000, seed: int = SEARCH_SEED,
                    max_evaluations: int = 80, dataset: str | None = None, batch_size: int = 1000,
                    device: str = "cpu", prompts: str | None = None,
                    cfg_scale: float | None = None) -> dict[str, object]:
    """Search `steps` sigmas for `sampler` on a model; the result (sigmas, quality, search cost, a text model's CFG
    scale) as a dict.

    A text-to-image model samples `prompts` (a prompt set, fewstep.data.prompts) with CFG at `cfg_scale` (None = its
    recorded or default scale, 1 = no guidance) and is scored on decoded images (text_objective)."""
    if steps < 2:
        raise UserError(f"a schedule of {steps} step(s) has no knot to search; use at least 2 steps")
    if seed == 0:
        raise UserError("the search must not see the ruler's seed 0; pick held-out seeds, e.g. --seed 1000")
    model = load_model(model_path, device)
    denoiser, decode, prompt_set, guidance = model.denoiser, model.decode, None, {}
    if model.prompt_encoder is not None:
        guidance = {"cfg_scale": default_cfg_scale(model) if cfg_scale is None else cfg_scale}
        denoiser = guided_denoiser(model.denoiser, guidance["cfg_scale"])
        name, quality, labels, prompt_set = text_objective(model, denoiser, n, prompts, dataset, seed, batch_size,
                                                           device)
    elif prompts is not None:
        raise UserError("--prompts needs a text-to-image model; this one has no text encoder")
    else:
        data = load_recorded(model.info.data, model.info.dataset, dataset, image_size(model.info))
        if data is None:
            raise UserError("this model records no fewstep dataset; pass --dataset to search against one")
        name, quality = held_out_objective(data, n)
        labels = torch.arange(n) % model.info.num_classes if model.info.num_classes else None
    values, nfe = [], 0

    def objective(knots: torch.Tensor) -> float:
        nonlocal nfe
        sigmas = append_zero(knots.exp().float()).to(device)
        result = generate(denoiser, model.info.shape, n, sigmas, sampler, seed, labels, batch_size, device)
        value, nfe = quality(decode(result.samples, batch_size)), result.nfe
        values.append(value if math.isfinite(value) else math.inf)
        return values[-1]

    start = make_schedule("karras", steps, model.denoiser.sigma_range).double()[:-1].log()
    began = time.perf_counter()
    with torch.no_grad():
        best, best_value = coordinate_search(objective, start, math.log(model.denoiser.sigma_range.sigma_min),
                                             max_evaluations)
    return {"sigmas": append_zero(best.exp().float()).tolist(), "sampler": sampler, "steps": steps, "nfe": nfe,
            "objective": name, "quality": best_value, "start": "karras", "start_quality": values[0],
            "model": str(model.path), "model_hash": model_hash(model.path),
            **({"dataset": data.name} if prompt_set is None else {"prompts": prompt_set}), **guidance, "seed": seed,
            "n": n,
            "evaluations": len(values), "search_seconds": time.perf_counter() - began,
            "search_network_evaluations": len(values) * n * nfe}
