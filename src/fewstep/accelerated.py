"""Accelerated model folders (`fewstep accelerate`): the same weights, with a fewstep.json recording a sampling plan.

A Stable-Diffusion-layout pipeline folder stays one: its components are hard-linked (or copied) unchanged, so
diffusers still loads the copy, and fewstep.json beside model_index.json records the plan.

The folder's fewstep.json records the plan's cache, guidance, CFG scale and interval (ModelInfo.acceleration) and
its sampler and schedule (ModelInfo.sampler, as a distilled student records its own: name, schedule, steps and, for
a searched schedule, its sigmas). Sampling, evaluating or benching the folder builds its plan from that record.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from fewstep.accel.calibrate import calibrated_spec
from fewstep.core.errors import UserError
from fewstep.core.files import replaced_folder
from fewstep.models.io import FEWSTEP_JSON, ModelInfo, load_model, resolve_model_dir
from fewstep.plan import PlanSettings, build_plan


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


def _link_or_copy(src: str, dst: str) -> str:
    """Weights (.safetensors, never rewritten in place) are hard-linked where the file system allows; the rest,
    fewstep.json included, is copied, so writing the new record never touches the source folder."""
    if src.endswith(".safetensors"):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def save_accelerated(model_path: str | Path, out: str | Path, settings: PlanSettings | None = None,
                     force: bool = False, dry_run: bool = False, prompts: str | None = None) -> ModelInfo:
    """Copy a model folder to `out` with its fewstep.json recording the sampling plan; the recorded ModelInfo.

    The plan is built and applied to the model before anything is written; `dry_run` writes nothing. Settings left
    unset keep what the model already records (fewstep.plan); `force` replaces a model folder; `prompts` is the prompt
    set a text-to-image model's teacache calibration samples (as --prompts names it).
    """
    from fewstep import __version__

    model = load_model(model_path)
    source, out = resolve_model_dir(model_path), Path(out)
    plan = build_plan(model, settings)
    if plan.cache:  # teacache / peer:diffusers-magcache with calibrate=true: fit now, on this plan's sampler and sigmas
        plan = replace(plan, cache=calibrated_spec(plan.cache, model, plan, prompts=prompts))
    plan.check(model)
    text = model.prompt_encoder is not None
    info = replace(model.info, sampler=plan.sampler_record(), acceleration=plan.acceleration_record(text),
                   extra={**model.info.extra, "accelerated_from": str(source.resolve())})
    _check_out(source, out, force)
    if dry_run:
        return info
    with replaced_folder(out) as tmp:  # a failed copy leaves `out` as it was
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        (tmp / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    return info
