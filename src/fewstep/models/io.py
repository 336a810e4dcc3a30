"""Model folders: diffusers' save_pretrained layout (safetensors) plus fewstep.json, and loading any of them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewstep.core.errors import UserError

FEWSTEP_JSON = "fewstep.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NETWORK_CLASSES = ("UNet2DModel", "DiTTransformer2DModel", "ResidualMLP")


@dataclass
class ModelInfo:
    """What fewstep.json records: backbone, parameterization, sigma range, data and default sampling."""

    arch: str
    network_class: str
    parameterization: str = "edm"  # edm | epsilon | v_prediction | sample (diffusers VP models)
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    num_classes: int = 0
    dataset: str = ""
    kind: str = "image"
    shape: list[int] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "heun", "schedule": "karras", "steps": 18})
    teacher: str | None = None
    consistency: dict[str, float] | None = None  # {"sigma_min", "scale"}: wrap D in core.precond.ConsistencyBoundary
    acceleration: dict[str, Any] | None = None  # {"cache", "guidance", "cfg_scale", "cfg_interval"}: fewstep accelerate
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: Path) -> "ModelInfo":
        try:
            data = json.loads(path.read_text())
            data.pop("fewstep_version", None)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path} is not a valid fewstep.json ({e})") from None


@dataclass
class LoadedModel:
    """A denoiser ready to sample, the network inside it, and its recorded info."""

    denoiser: nn.Module
    network: nn.Module
    info: ModelInfo
    path: Path


def save_model(path: str | Path, network: nn.Module, info: ModelInfo, scheduler_config: dict | None = None) -> Path:
    """Write network (save_pretrained, safetensors), fewstep.json and a diffusers scheduler config.

    EDM models get an EDMEulerScheduler config; a model of a user's VP network keeps `scheduler_config` (its own).
    """
    from fewstep import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(path, safe_serialization=True)
    (path / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    if info.parameterization == "edm":  # lets diffusers run it: EDMEulerScheduler uses the same c_in/c_out/c_noise
        from diffusers import EDMEulerScheduler

        EDMEulerScheduler(sigma_min=info.sigma_min, sigma_max=info.sigma_max, sigma_data=info.sigma_data,
                          prediction_type="epsilon").save_pretrained(path)
    elif scheduler_config is not None:
        (path / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    return path


def model_hash(folder: Path) -> str:
    """16 hex digits of the SHA-256 of a model folder's safetensors files (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _refuse_pickle(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(f"{folder} holds only pickle weights ({pickles[0]}); fewstep loads safetensors only: "
                            "re-save with save_pretrained(safe_serialization=True)")
        raise UserError(f"{folder} has no .safetensors weights")


def _load_network(folder: Path, class_name: str) -> nn.Module:
    _refuse_pickle(folder)
    if class_name == "ResidualMLP":
        from fewstep.models.mlp import ResidualMLP as cls
    elif class_name in NETWORK_CLASSES:
        import diffusers
        cls = getattr(diffusers, class_name)
    else:
        raise UserError(f"{folder}: network class {class_name!r} is not supported; fewstep reads {', '.join(NETWORK_CLASSES)}")
    net = cls.from_pretrained(folder, use_safetensors=True)
    if class_name == "DiTTransformer2DModel":
        from fewstep.models.networks import disable_label_dropout
        disable_label_dropout(net)
    return net.eval().requires_grad_(False)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory resolves to its model/ folder; a model folder is returned as is."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model folder {path} does not exist")
    if (path / "model" / FEWSTEP_JSON).exists():
        return path / "model"
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a fewstep model or run folder, or a diffusers UNet2DModel folder with its scheduler, as a denoiser."""
    from fewstep.models.diffusers_adapter import PREDICTION_TYPES
    from fewstep.models.diffusers_folder import load_diffusers_folder

    folder = resolve_model_dir(path)
    if not (folder / FEWSTEP_JSON).exists():
        return load_diffusers_folder(folder, device)
    info = ModelInfo.from_json(folder / FEWSTEP_JSON)
    if info.parameterization == "edm":
        from fewstep.core.precond import EDMPrecond
        from fewstep.models.networks import call_network
        net = _load_network(folder, info.network_class)
        denoiser = EDMPrecond(net, call_network, info.sigma_data, info.sigma_min, info.sigma_max, info.num_classes)
    elif info.parameterization in PREDICTION_TYPES:  # a student of a user's VP network: its UNet + scheduler config
        found = load_diffusers_folder(folder, device)
        net, denoiser = found.network, found.denoiser
    else:
        raise UserError(f"{folder}: unknown parameterization {info.parameterization!r}")
    if info.consistency:
        from fewstep.core.precond import ConsistencyBoundary
        denoiser = ConsistencyBoundary(denoiser, info.consistency["sigma_min"], info.consistency["scale"])
    return LoadedModel(denoiser.to(device).eval(), net, info, folder)
