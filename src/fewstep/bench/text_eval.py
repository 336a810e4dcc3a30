"""`fewstep eval` on a text-to-image model: each prompt set sampled from the same seeds, decoded, and scored.

Metric dispatch: prompts the captions ruler can read (a model trained on captions, or `--prompts captions:SPLIT`)
get prompt accuracy, per-attribute accuracy and FD / precision / recall with their floors (caption_quality); any
other prompts have no reference data, so the row holds cost and agreement with the teacher's converged guided ODE
only, and says so in `scored_by`. `--clip DIR` adds a CLIP score either way. One row per setting: the first prompt
set's metrics under their plain names, each further set's (the held-out captions) prefixed by its split. Every
quality number carries its interval (fewstep.metrics.uncertainty), held-out ones under the prefixed name.
With a search, every set is searched with its own prompts as the verifier's request, and each set records its
search's cost.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from fewstep.bench.evaluate import EvalSettings, golden_settings, result_row, sample_and_cost
from fewstep.bench.reference import converged_samples
from fewstep.core.errors import UserError
from fewstep.data.prompts import PromptSet, prompt_sets
from fewstep.metrics import captions
from fewstep.metrics.agreement import agreement_terms
from fewstep.metrics.captions import caption_quality, ruler_images
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.uncertainty import mean_uncertainty, merge_uncertainty
from fewstep.models.info import LoadedModel, prompt_cond
from fewstep.models.io import load_model
from fewstep.plan import build_plan
from fewstep.samplers import generate
from fewstep.search.run import model_data, prompt_request, search_rows

NO_REFERENCE = "cost and agreement with the teacher only: these prompts have no reference data"
# the same for every prompt set: not prefixed
SHARED = ("bootstrap_resamples", "bootstrap_seed", "jackknife_groups", "jackknife_grouping")
RESAMPLED = ("bootstrap", "jackknife")  # dicts of each metric's replicates: their keys are prefixed


def is_captions_task(model: LoadedModel, dataset: str | None = None) -> bool:
    """Whether the model (or the --dataset override) is the captions set, whose prompts the ruler can score."""
    return (dataset or model.info.dataset or "").startswith("captions")


def _quality(images: torch.Tensor, prompts: PromptSet, clip: str | None) -> dict:
    if prompts.split is not None:
        return caption_quality(ruler_images(images), prompts.prompts, prompts.split, clip, captions.RULER_CONFIG)
    out = {"n": len(images), "scored_by": NO_REFERENCE}
    if clip is not None:
        from fewstep.metrics.clip import clip_similarities
        terms = {"clip_score": SampleMean(clip_similarities(images, prompts.prompts, clip))}
        out["clip_score"] = max(terms["clip_score"].estimate(), 0.0)  # clip_score's clamp
        out = merge_uncertainty(out, mean_uncertainty(terms, out))
    return out


def _with_agreement(metrics: dict, images: torch.Tensor, teacher_images: torch.Tensor) -> dict:
    """metrics with agreement_rmse to the teacher's images and its bootstrap interval."""
    terms = agreement_terms(images, teacher_images)
    estimates = {k: t.estimate() for k, t in terms.items()}
    return merge_uncertainty({**metrics, **estimates}, mean_uncertainty(terms, estimates))


def _prefixed(metrics: dict, prefix: str) -> dict:
    """A further prompt set's metrics (and their replicates) under prefixed names."""
    out = {k if k in SHARED else prefix + k: v for k, v in metrics.items() if k not in ("split", *RESAMPLED)}
    return {**out, **{key: {prefix + k: v for k, v in metrics[key].items()} for key in RESAMPLED if key in metrics}}


def evaluate_text_model(model_path: str | Path, model: LoadedModel, settings: EvalSettings) -> dict[str, object]:
    """Sample every prompt set of `settings.prompts`, decode, score (see the module) and cost; one result row."""
    if settings.dataset and not settings.dataset.startswith("captions"):
        raise UserError(f"a text-to-image model is measured on prompt sets, not on {settings.dataset}; --dataset "
                        "takes captions (its prompts are scored by the captions ruler), or pass --prompts")
    if settings.inception:
        raise UserError("--inception measures against a dataset's images; a text-to-image model is measured on prompt "
                        "sets (docs/evaluation.md)")
    plan = build_plan(model, settings)
    s, indices, seeds_row = golden_settings(replace(settings, **asdict(plan.settings())))
    sets = prompt_sets(s.prompts, s.n, is_captions_task(model, s.dataset))
    requests = [prompt_request(s.search, p.prompts, s.n) for p in sets] if s.search else [None] * len(sets)
    data = model_data(model) if s.search else None
    if sets[0].split is None and not s.agreement:
        raise UserError("these prompts have no reference data, so agreement with the teacher is the only quality "
                        "eval can measure; drop --no-agreement (or use --prompts captions:seen)")
    teacher = load_model(model.info.teacher, s.device) if model.info.teacher else model
    measured: dict[str, object] = {"prompt_set": "captions" if len(sets) > 1 else sets[0].name,
                                   "split": sets[0].split, "image_shape": model.info.image_shape, **seeds_row}
    for i, (prompts, request) in enumerate(zip(sets, requests)):
        cond = prompt_cond(model, prompts.prompts, s.n, s.negative_prompt)
        searched = search_rows(model, plan, s.n, s.search, data, s.seed, cond, s.batch_size, s.device, request,
                               indices)
        metrics = {}
        if i == 0:
            result, skipped, cost = sample_and_cost(model, plan, cond, s, searched.result if searched else None,
                                                    indices)
            measured.update({"nfe": result.nfe, **skipped, **cost, **(searched.row(cost) if searched else {})})
        elif searched:
            result = searched.result
            metrics.update(searched.result.row())
        else:
            with plan.applied(model) as run:
                result = generate(run.denoiser, model.info.shape, s.n, plan.sigmas, plan.sampler, s.seed, cond,
                                  s.batch_size, s.device, indices, plan.sampler_options)
        images = model.decode(result.samples, s.batch_size)
        metrics.update(_quality(images, prompts, s.clip))
        if s.agreement:
            teacher_cond = cond if teacher is model else prompt_cond(teacher, prompts.prompts, s.n, s.negative_prompt)
            reference = converged_samples(teacher, s.n, s.seed, teacher_cond, s.batch_size, s.device, plan.cfg_scale,
                                          indices)
            metrics = _with_agreement(metrics, images, teacher.decode(reference, s.batch_size))
            if prompts.split is None:
                metrics["agreement_rmse_floor"] = 0.0  # the same noise, deterministic: no floor to hide behind
        measured = merge_uncertainty(measured, _prefixed(metrics, "" if i == 0 else f"{prompts.split}_"))
    return result_row(model_path, model, s, measured)
