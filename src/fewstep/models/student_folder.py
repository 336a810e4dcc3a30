"""A distilled student of a diffusers VP teacher as a diffusers pipeline folder that plain diffusers samples exactly.

Students of VP teachers sample on diffusers' trailing timesteps (schedule "trailing"), so a stock scheduler with
`timestep_spacing="trailing"` computes their grid from `num_inference_steps` alone:
- Euler-sampled students (progressive, lightning, reflow): EulerDiscreteScheduler (a text-to-image pipeline, which
  scales its inputs) or DDIMScheduler (DDPMPipeline, which does not); deterministic DDIM is Euler in sigma space.
- Consistency-sampled students (consistency, dmd2, add): LCMScheduler over all trained timesteps
  (original_inference_steps = num_train_timesteps, whose skipping schedule is the trailing grid), with the
  student's LCM boundary scale as timestep_scaling (a student without a boundary gets one too large to act).
The timesteps agree with fewstep's for every step count that divides num_train_timesteps (1, 2, 4, ... of 1000).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from torch import nn

NO_BOUNDARY = 1e6  # LCM timestep_scaling whose c_skip (0.25 / (t * scale)^2) is below float precision for t >= 1


def student_scheduler(teacher_config: dict, sampler: str, boundary_scale: float | None, scales_inputs: bool):
    """The diffusers scheduler that samples a student of a teacher with this scheduler config as fewstep does."""
    import diffusers

    full = dict(getattr(diffusers, teacher_config["_class_name"]).from_config(teacher_config).config)
    if sampler == "consistency":
        return diffusers.LCMScheduler.from_config(
            full, original_inference_steps=full["num_train_timesteps"], timestep_scaling=boundary_scale or NO_BOUNDARY,
            clip_sample=False, thresholding=False, set_alpha_to_one=True, steps_offset=1)
    if sampler not in ("euler", "ddim"):
        raise ValueError(f"no diffusers scheduler reproduces fewstep's {sampler!r} sampler")
    if scales_inputs:
        return diffusers.EulerDiscreteScheduler.from_config(
            full, timestep_spacing="trailing", use_karras_sigmas=False, final_sigmas_type="zero", steps_offset=1,
            interpolation_type="linear", timestep_type="discrete")
    return diffusers.DDIMScheduler.from_config(full, timestep_spacing="trailing", clip_sample=False,
                                               thresholding=False, set_alpha_to_one=True, steps_offset=1)


def _share(src: Path, dst: Path) -> None:
    """Hard-link a folder's files into dst (a copy where linking is not possible, e.g. across file systems)."""
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def write_pipeline_folder(path: Path, unet: nn.Module, scheduler, teacher: Path | None) -> None:
    """Write unet/, scheduler/ and model_index.json into path; a text-to-image teacher's other components
    (text encoder, tokenizer, VAE, ...) are shared with it by hard links. `teacher` None: a DDPMPipeline."""
    import diffusers

    if teacher is None:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path, safe_serialization=True)
        return
    index = json.loads((teacher / "model_index.json").read_text())
    for part, entry in index.items():
        if part.startswith("_") or part in ("unet", "scheduler") or not isinstance(entry, list):
            continue
        if entry[1] is not None and (teacher / part).is_dir():
            _share(teacher / part, path / part)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    scheduler.save_pretrained(path / "scheduler")
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
