"""Read a user's local diffusers folder (a pipeline, or a UNet2DModel beside a scheduler config); text-to-image
pipelines go to pipeline_folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fewstep.core.errors import UserError
from fewstep.models.info import LoadedModel, ModelInfo
from fewstep.models.weights import load_network

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "PNDMScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                     "UniPCMultistepScheduler", "LCMScheduler")


def _find(folder: Path) -> tuple[Path, Path]:
    """(network folder, scheduler folder) of a pipeline folder or of a bare model folder."""
    if (folder / "model_index.json").exists():
        return folder / "unet", folder / "scheduler"
    if (folder / "config.json").exists():
        sched = folder / "scheduler" if (folder / "scheduler" / "scheduler_config.json").exists() else folder
        return folder, sched
    raise UserError(f"{folder} is not a model folder: it has no fewstep.json, model_index.json or config.json")


def load_diffusers_folder(folder: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A diffusers UNet2DModel and its DDPM/DDIM-style scheduler, or a text-to-image pipeline, as an EDM denoiser."""
    import diffusers

    from fewstep.models.diffusers_adapter import DiffusersVPDenoiser
    from fewstep.models.pipeline_folder import is_text_pipeline, load_pipeline_folder

    if is_text_pipeline(folder):
        return load_pipeline_folder(folder, device)
    net_dir, sched_dir = _find(folder)
    if not (net_dir / "config.json").exists():
        raise UserError(f"{net_dir} has no config.json; expected a diffusers UNet2DModel folder")
    class_name = json.loads((net_dir / "config.json").read_text()).get("_class_name", "")
    if class_name != "UNet2DModel":
        raise UserError(f"{net_dir}: fewstep reads diffusers UNet2DModel folders, not {class_name or 'this config'}")
    if not (sched_dir / "scheduler_config.json").exists():
        raise UserError(f"{folder}: no scheduler_config.json beside the UNet; save the scheduler with save_pretrained")
    sched_cfg = json.loads((sched_dir / "scheduler_config.json").read_text())
    sched_name = sched_cfg.get("_class_name", "")
    if sched_name not in SCHEDULER_CLASSES:
        raise UserError(f"{sched_dir}: scheduler {sched_name!r} is not a discrete VP scheduler fewstep reads "
                        f"({', '.join(SCHEDULER_CLASSES)})")
    scheduler = getattr(diffusers, sched_name).from_config(sched_cfg)
    net = load_network(net_dir, class_name)
    prediction = sched_cfg.get("prediction_type", "epsilon")
    boundary = sched_cfg.get("timestep_scaling", 10.0) if sched_name == "LCMScheduler" else None  # LCM's c_skip
    denoiser = DiffusersVPDenoiser(net, scheduler.alphas_cumprod, prediction, boundary_scaling=boundary)
    cfg = net.config
    shape = [cfg.in_channels, *([cfg.sample_size] * 2 if isinstance(cfg.sample_size, int) else cfg.sample_size)]
    info = ModelInfo(arch="unet", network_class=class_name, parameterization=prediction,
                     sigma_min=denoiser.sigma_range.sigma_min, sigma_max=denoiser.sigma_range.sigma_max,
                     num_classes=denoiser.num_classes, dataset="", kind="image", shape=shape,
                     sampler={"name": "ddim", "schedule": "uniform", "steps": 50},
                     extra={"scheduler": sched_name, "num_train_timesteps": len(scheduler.alphas_cumprod)})
    return LoadedModel(denoiser.to(device).eval(), net, info, folder)


def scheduler_config(folder: Path) -> dict:
    """The scheduler config of a diffusers folder (a pipeline or a bare model folder), as saved."""
    return json.loads((_find(folder)[1] / "scheduler_config.json").read_text())
