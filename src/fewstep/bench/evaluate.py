"""`fewstep eval`: one model, one sampler setting, measured on the ruler; and sweeps of samplers x NFE."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from fewstep.accel import AdaptiveGuidance
from fewstep.bench.provenance import machine, stamp, versions
from fewstep.bench.reference import converged_samples
from fewstep.core import cond as conds
from fewstep.core.cond import Cond, CondLike
from fewstep.core.errors import UserError
from fewstep.core.noise import SampleNoise
from fewstep.data import load_recorded
from fewstep.metrics import count_flops, evaluate_samples, peak_memory, time_per_sample
from fewstep.metrics.inception import inception_quality, load_inception
from fewstep.models.info import LoadedModel, image_size
from fewstep.models.io import load_model, model_hash, resolve_model_dir
from fewstep.plan import AppliedPlan, PlanSettings, SamplingPlan, build_plan
from fewstep.samplers import SampleResult, generate, get_sampler, initial_latents
from fewstep.search.run import search_rows
from fewstep.search.seeds import read_golden_seeds


@dataclass
class EvalSettings(PlanSettings):
    """How to sample and measure: the sampling plan's settings (fewstep.plan; None = the model's record), n, seed,
    timing batch, agreement, dataset and device."""

    n: int = 2000
    seed: int = 0
    batch_size: int = 256
    timing_batch: int = 64
    timing_repeats: int = 5
    agreement: bool = True
    dataset: str | None = None  # defaults to the dataset recorded in fewstep.json
    device: str = "cpu"
    inception: str | None = None  # Inception weights (.safetensors) for standard FID (docs/metrics.md)
    prompts: str | None = None  # a text-to-image model's prompt set (fewstep.data.prompts); None = its default
    negative_prompt: str | None = None  # the null condition of text CFG (None = the empty prompt)
    clip: str | None = None  # a local CLIP folder: text-to-image rows add clip_score (docs/evaluation.md)
    search: str | None = None  # inference-time search, e.g. "best-of:n=8,verifier=classifier" (fewstep.search)
    seeds_from: str | None = None  # a `fewstep seeds` ranking: sample i from its i-th best seed, on its noise seed


def _cost(run: AppliedPlan, plan: SamplingPlan, shape, labels: CondLike, s: EvalSettings) -> dict[str, object]:
    """FLOPs per sample of a whole sampler run, median seconds per sample at timing_batch, peak memory."""
    denoiser, spec, sigmas = run.denoiser, get_sampler(plan.sampler), plan.sigmas.to(s.device)
    b = s.timing_batch
    x = initial_latents(denoiser, s.seed, range(b), shape, sigmas[0], s.device)
    sigmas = sigmas.to(x.dtype)  # as generate() passes them: a flow model's SIGMA_INF = 2^26 needs the state's dtype
    if isinstance(labels, Cond):  # prompts: the rows cycle over the timing batch
        lab = labels.select(torch.arange(b) % len(labels)).to(s.device)
    else:
        lab = None if labels is None else (torch.arange(b) % denoiser.num_classes).to(s.device)
    noise = SampleNoise(s.seed, range(b), s.device, stream=1)

    options = plan.sampler_options or {}

    def timed() -> torch.Tensor:
        return spec.fn(denoiser, x, sigmas, lab, noise, **options)

    flops = count_flops(lambda: spec.fn(denoiser, x[:4], sigmas, conds.select(lab, slice(0, 4)),
                                        SampleNoise(s.seed, range(4), s.device, stream=1), **options)) / 4
    timing = time_per_sample(timed, b, repeats=s.timing_repeats)
    memory = peak_memory(timed, s.device)
    return {"flops_per_sample": flops, "seconds_per_sample": timing.seconds_per_sample, "timing_batch": b,
            "timing_repeats_seconds": [round(t, 5) for t in timing.repeats_seconds],
            "peak_memory_bytes": memory.peak_bytes, "memory_method": memory.method}


def sample_and_cost(model: LoadedModel, plan: SamplingPlan, cond: CondLike, s: EvalSettings,
                    result: SampleResult | None = None,
                    indices: Sequence[int] | None = None) -> tuple[SampleResult, dict, dict]:
    """n samples of seed s.seed (from noise indices `indices`, default 0..n-1) with the plan applied (unless a search
    already drew them), what its accelerators skipped, and the run's cost."""
    with plan.applied(model) as run:  # removed before the teacher's reference is sampled: it may be this model
        result = result or generate(run.denoiser, model.info.shape, s.n, plan.sigmas, plan.sampler, s.seed, cond,
                                    s.batch_size, s.device, indices, plan.sampler_options)
        skipped = {"cache_stats": run.handle.stats() if s.cache else None,
                   "rows_evaluated": getattr(run.denoiser, "rows_evaluated", None),
                   "guidance_stats": run.denoiser.stats() if isinstance(run.denoiser, AdaptiveGuidance) else None}
        cost = _cost(run, plan, model.info.shape, cond, s)
    return result, skipped, cost


def result_row(model_path: str | Path, model: LoadedModel, s: EvalSettings, measured: dict) -> dict[str, object]:
    """One reproducible row: the model, its hash and method, the settings, what was measured, versions, machine."""
    return {"model": str(resolve_model_dir(model_path)), "model_hash": model_hash(model.path),
            "method": model.info.extra.get("distill", {}).get("method", "sampler"),
            **{k: v for k, v in asdict(s).items() if k not in ("device",)}, **measured,
            "versions": versions(), "machine": machine(s.device), **stamp()}


def evaluate_model(model_path: str | Path, settings: EvalSettings) -> dict[str, object]:
    """Sample, score against the data (with floors) and the teacher, and cost; one reproducible result row.

    A text-to-image model is sampled on its prompt sets and scored by fewstep.bench.text_eval."""
    s = settings
    if s.n < 2:
        raise UserError(f"--n must be at least 2, got {s.n}")
    model = load_model(model_path, s.device)
    if model.prompt_encoder is not None:
        from fewstep.bench.text_eval import evaluate_text_model
        return evaluate_text_model(model_path, model, s)
    if s.prompts or s.negative_prompt or s.clip:
        raise UserError("--prompts, --negative-prompt and --clip need a text-to-image model; this one has no text "
                        "encoder")
    data = load_recorded(model.info.data, model.info.dataset, s.dataset, image_size(model.info))
    if data is None:
        raise UserError("this model records no fewstep dataset; pass --dataset to measure it against one")
    if s.inception and data.kind != "image":
        raise UserError(f"--inception measures images; {data.name} is a 2-D set (measured with sw2, mmd and logp)")
    inception = load_inception(s.inception).to(s.device) if s.inception else None  # a bad file fails early
    plan = build_plan(model, s)
    s, indices, seeds_row = golden_settings(replace(s, **asdict(plan.settings())))
    labels = torch.arange(s.n) % model.info.num_classes if model.info.num_classes else None
    searched = search_rows(model, plan, s.n, s.search, data, s.seed, labels, s.batch_size, s.device, None, indices)
    result, skipped, cost = sample_and_cost(model, plan, labels, s, searched.result if searched else None, indices)
    teacher = load_model(model.info.teacher, s.device) if model.info.teacher else model
    reference = converged_samples(teacher, s.n, s.seed, labels, s.batch_size, s.device, indices=indices) \
        if s.agreement else None
    metrics = evaluate_samples(data, result.samples, labels, reference)
    if inception is not None:
        fid = inception_quality(data, result.samples, inception)
        metrics.update(fid, jackknife={**metrics.get("jackknife", {}), **fid["jackknife"]})
    return result_row(model_path, model, s, {"dataset": data.name, "dataset_spec": str(data.spec or data.name),
                                             "nfe": result.nfe, **skipped, **metrics, **cost, **seeds_row,
                                             **(searched.row(cost) if searched else {})})


def golden_settings(s: EvalSettings) -> tuple[EvalSettings, list[int] | None, dict[str, object]]:
    """With s.seeds_from: the settings on the ranking's noise seed, the noise indices of the n samples and the row's
    record of them (the seeds used, best first; they cycle past the bank); else s, None and nothing."""
    if not s.seeds_from:
        return s, None, {}
    golden = read_golden_seeds(s.seeds_from)
    return replace(s, seed=golden.seed), golden.indices(s.n), {"seed_indices": golden.indices(min(s.n, len(
        golden.order)))}


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The most steps whose NFE does not exceed `nfe` (at least 1)."""
    spec = get_sampler(sampler)
    steps = 1
    while spec.nfe(steps + 1) <= nfe:
        steps += 1
    return steps


def sweep(model_path: str | Path, base: EvalSettings, samplers: Iterable[str], nfes: Iterable[int],
          schedules: Iterable[str] = ("karras",)) -> Iterator[dict[str, object]]:
    """evaluate_model over samplers x schedules x NFE budgets, yielding each row as soon as it is measured."""
    for sampler in samplers:
        for schedule in schedules:
            for nfe in nfes:
                yield evaluate_model(model_path, replace(base, sampler=sampler, schedule=schedule,
                                                         steps=steps_for_nfe(sampler, nfe)))


def write_csv(rows: list[dict[str, object]], path: str | Path) -> Path:
    """The scalar columns of rows as CSV."""
    keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float, str, type(None))) for r in rows)]
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def quality_key(row: dict[str, object]) -> str:
    """The headline quality metric of a row: fd for images, sw2 for 2-D data, agreement with the teacher for prompts
    without reference data."""
    return next((k for k in ("fd", "sw2") if k in row), "agreement_rmse")


def plot_sweep(rows: list[dict[str, object]], path: str | Path) -> Path:
    """Quality vs NFE, one line per sampler/schedule, with the data floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = quality_key(rows[0])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name in dict.fromkeys((r["sampler"], r["schedule"]) for r in rows):
        sel = sorted((r for r in rows if (r["sampler"], r["schedule"]) == name), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in sel], [r[key] for r in sel], marker="o", label=f"{name[0]} ({name[1]})")
    ax.axhline(rows[0][f"{key}_floor"], color="k", ls="--", lw=1, label="data floor (real vs real)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(key.upper())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
