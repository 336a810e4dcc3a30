"""Accelerated model folders: the same weights, with a fewstep.json that records the accelerators and the sampler.

`save_accelerated` (`fewstep accelerate`) copies a model folder and records a cache spec, a guidance spec, the CFG
scale and sigma interval (ModelInfo.acceleration) and the sampler and schedule (ModelInfo.sampler, as a distilled
student records its own: name, schedule, steps and, for a searched schedule, its sigmas). Sampling, evaluating or
benching the folder applies them unless told otherwise (`resolve_acceleration`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fewstep.accel.adaptive_guidance import guided_denoiser
from fewstep.accel.registry import apply_accelerator
from fewstep.accel.schedule_search import is_searched, load_schedule
from fewstep.core.errors import UserError
from fewstep.core.schedules import make_schedule
from fewstep.models.io import FEWSTEP_JSON, LoadedModel, ModelInfo, load_model, resolve_model_dir
from fewstep.samplers import get_sampler


@dataclass(frozen=True)
class Acceleration:
    """Training-free settings to sample with: cache spec, guidance spec, CFG scale and CFG sigma interval."""

    cache: str | None = None
    guidance: str | None = None
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] | None = None


def resolve_acceleration(info: ModelInfo, cache: str | None = None, guidance: str | None = None,
                         cfg_scale: float = 1.0, cfg_interval: tuple[float, float] | None = None) -> Acceleration:
    """The given settings, the model's recorded ones where a setting is left at its default (None, scale 1).

    Guidance 'none' also drops the recorded CFG scale and interval: CFG is then only what is given.
    """
    recorded = info.acceleration or {}
    guided = {} if guidance == "none" else recorded
    interval = guided.get("cfg_interval") if cfg_interval is None else cfg_interval
    return Acceleration(cache=recorded.get("cache") if cache is None else cache,
                        guidance=guided.get("guidance") if guidance is None else guidance,
                        cfg_scale=guided.get("cfg_scale", 1.0) if cfg_scale == 1.0 else cfg_scale,
                        cfg_interval=tuple(interval) if interval else None)


def sampler_record(model: LoadedModel, sampler: str | None = None, steps: int | None = None,
                   schedule: str | None = None) -> dict[str, Any]:
    """ModelInfo.sampler with the given sampler, steps and schedule (a searched schedule's file: its sigmas)."""
    if is_searched(schedule):
        if steps is not None:
            raise UserError("a searched schedule fixes the steps; drop --steps")
        searched = load_schedule(schedule)
        record = {"name": sampler or searched["sampler"], "schedule": str(schedule),
                  "steps": len(searched["sigmas"]) - 1, "sigmas": searched["sigmas"][:-1]}
    else:
        record = {**model.info.sampler, "name": sampler or model.info.sampler.get("name", "heun")}
        if steps is not None or schedule is not None:  # a new grid: recorded sigmas no longer apply
            record.pop("sigmas", None)
            record.update(schedule=schedule or record.get("schedule", "karras"),
                          steps=record.get("steps", 18) if steps is None else steps)
        if not record.get("sigmas"):
            make_schedule(record.get("schedule", "karras"), record.get("steps", 18), model.denoiser.sigma_range)
    get_sampler(record["name"])
    return record


def _check_acceleration(model: LoadedModel, acceleration: Acceleration) -> dict[str, Any] | None:
    """ModelInfo.acceleration for the settings (None: nothing to record), after trying them on the model."""
    apply_accelerator(model, acceleration.cache or "none").remove()
    guided_denoiser(model.denoiser, acceleration.cfg_scale, acceleration.cfg_interval, acceleration.guidance)
    record = replace(acceleration, cache=None if acceleration.cache == "none" else acceleration.cache,
                     guidance=None if acceleration.guidance == "none" else acceleration.guidance)
    return None if record == Acceleration() else asdict(record)


def _check_out(source: Path, out: Path, force: bool) -> None:
    """Refuse an --out that overlaps the model folder, or that holds files and is not a model folder to --force over."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(f"--out {out} overlaps the model folder {source}; choose a folder outside it")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        if not force:
            raise UserError(f"--out {out} exists and is not empty; choose a new folder or pass --force to replace it")
        if not (dst / FEWSTEP_JSON).is_file():
            raise UserError(f"--force replaces model folders only; {out} has no {FEWSTEP_JSON}, choose a new folder")


def save_accelerated(model_path: str | Path, out: str | Path, cache: str | None = None, guidance: str | None = None,
                     cfg_scale: float = 1.0, cfg_interval: tuple[float, float] | None = None,
                     sampler: str | None = None, steps: int | None = None, schedule: str | None = None,
                     force: bool = False, dry_run: bool = False) -> ModelInfo:
    """Copy a model folder to `out` with its fewstep.json recording accelerators and sampler; the recorded ModelInfo.

    Every setting is checked on the model before anything is written; `dry_run` writes nothing. Settings left at
    their defaults keep what the model already records (see resolve_acceleration); `force` replaces a model folder.
    """
    from fewstep import __version__

    model = load_model(model_path)
    source, out = resolve_model_dir(model_path), Path(out)
    acceleration = resolve_acceleration(model.info, cache, guidance, cfg_scale, cfg_interval)
    info = replace(model.info, sampler=sampler_record(model, sampler, steps, schedule),
                   acceleration=_check_acceleration(model, acceleration),
                   extra={**model.info.extra, "accelerated_from": str(source.resolve())})
    _check_out(source, out, force)
    if dry_run:
        return info
    if force and out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, dirs_exist_ok=True)
    (out / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    return info
