"""Model folders: diffusers' save_pretrained layout (safetensors) plus fewstep.json, and loading any of them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from fewstep.core.errors import UserError
from fewstep.models.info import FEWSTEP_JSON, LoadedModel, ModelInfo
from fewstep.models.weights import load_network, model_hash

__all__ = ["FEWSTEP_JSON", "LoadedModel", "ModelInfo", "load_model", "model_hash", "resolve_model_dir", "save_model"]


def save_model(path: str | Path, network: nn.Module | None, info: ModelInfo, scheduler_config: dict | None = None) -> Path:
    """Write network (save_pretrained, safetensors; None: written already), fewstep.json and a scheduler config.

    EDM models get an EDMEulerScheduler config; a flow model (fewstep's or a user's) and a model of a user's VP
    network keep `scheduler_config` (a FlowMatchEulerDiscreteScheduler's, or the network's own).
    """
    from fewstep import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if network is not None:
        network.save_pretrained(path, safe_serialization=True)
    (path / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    if info.parameterization == "edm":  # lets diffusers run it: EDMEulerScheduler uses the same c_in/c_out/c_noise
        from diffusers import EDMEulerScheduler

        EDMEulerScheduler(sigma_min=info.sigma_min, sigma_max=info.sigma_max, sigma_data=info.sigma_data,
                          prediction_type="epsilon").save_pretrained(path)
    elif scheduler_config is not None:
        (path / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory resolves to its model/ folder; a model folder is returned as is."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model folder {path} does not exist")
    if (path / "model" / FEWSTEP_JSON).exists():
        return path / "model"
    if not any((path / name).exists() for name in (FEWSTEP_JSON, "model_index.json", "config.json")):
        _refuse_unexported_run(path)
    return path


def _refuse_unexported_run(path: Path) -> None:
    """A run directory whose model is not exported yet (still training, or stopped): say so, with its checkpoint."""
    steps = sorted(p for p in [*path.glob("checkpoints/step-*"), *path.glob("*/checkpoints/step-*")]
                   if (p / "state.json").exists())
    if steps or (path / "config.toml").exists():
        latest = f"latest checkpoint: {steps[-1].relative_to(path)}" if steps else "no checkpoint yet"
        raise UserError(f"{path} is a run whose model is not exported yet ({latest}); wait for it to finish, or "
                        "resume it with --resume")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a fewstep model or run folder, a diffusers UNet2DModel or transformer folder with its scheduler, or a
    Stable Diffusion (XL) pipeline folder, as a denoiser; a damaged folder is a one-line UserError."""
    from safetensors import SafetensorError

    from fewstep.core.files import first_line

    folder = resolve_model_dir(path)
    try:
        return _load_folder(folder, device)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, SafetensorError) as e:
        # truncated or foreign weights, weights of the wrong shape, a config.json of the wrong types
        raise UserError(f"model folder {folder} cannot be loaded ({first_line(e)}); check its files or export it "
                        "again") from None


def _load_folder(folder: Path, device: str | torch.device) -> LoadedModel:
    from fewstep.models.diffusers_adapter import PREDICTION_TYPES
    from fewstep.models.diffusers_folder import load_diffusers_folder
    from fewstep.models.networks import ARCHS
    from fewstep.models.transformers import TRANSFORMERS, is_transformer_folder, load_transformer_folder

    from fewstep.models.pipeline_folder import is_text_pipeline, load_pipeline_folder

    if not (folder / FEWSTEP_JSON).exists():
        if is_transformer_folder(folder) and not is_text_pipeline(folder):
            return load_transformer_folder(folder, device)
        return load_diffusers_folder(folder, device)
    info = ModelInfo.from_json(folder / FEWSTEP_JSON)
    encoders = {}  # a pipeline folder's prompt encoder and autoencoder
    if info.parameterization == "edm":
        from fewstep.core.precond import EDMPrecond
        from fewstep.models.networks import call_network
        net = load_network(folder, info.network_class)
        denoiser = EDMPrecond(net, call_network, info.sigma_data, info.sigma_min, info.sigma_max, info.num_classes)
    elif info.parameterization == "flow" and info.arch in ARCHS:  # a fewstep network trained as a flow
        from fewstep.models.flow import flow_denoiser, scheduler_config_of
        net = load_network(folder, info.network_class)
        denoiser = flow_denoiser(net, info.num_classes, info.sigma_data, scheduler_config_of(folder))
    elif info.network_class in TRANSFORMERS:  # a user's transformer's student, or a fewstep SD3 pipeline teacher
        found = load_pipeline_folder(folder, device) if is_text_pipeline(folder) else load_transformer_folder(folder,
                                                                                                             device)
        net, denoiser = found.network, found.denoiser
        encoders = {"prompt_encoder": found.prompt_encoder, "autoencoder": found.autoencoder}
    elif info.parameterization in PREDICTION_TYPES:  # a student of a user's VP network: its UNet + scheduler config
        found = load_diffusers_folder(folder, device)
        net, denoiser = found.network, found.denoiser
        encoders = {"prompt_encoder": found.prompt_encoder, "autoencoder": found.autoencoder}
    else:
        raise UserError(f"{folder}: unknown parameterization {info.parameterization!r}")
    if info.consistency:
        from fewstep.core.precond import ConsistencyBoundary
        denoiser = ConsistencyBoundary(denoiser, info.consistency["sigma_min"], info.consistency["scale"])
    return LoadedModel(denoiser.to(device).eval(), net, info, folder, **encoders)
