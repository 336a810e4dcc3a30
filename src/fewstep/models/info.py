"""What a model folder records (fewstep.json) and a loaded model: denoiser, network and info."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fewstep.core.errors import UserError

FEWSTEP_JSON = "fewstep.json"


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
