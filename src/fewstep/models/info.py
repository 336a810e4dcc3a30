"""What a model folder records (fewstep.json) and a loaded model: denoiser, network and info."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fewstep.core.cond import Cond
from fewstep.core.errors import UserError

FEWSTEP_JSON = "fewstep.json"
TEXT_CFG_SCALE = 7.5  # a text-to-image model's CFG scale when its record gives none (diffusers' pipeline default)


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
    dataset: str = ""  # the data's spec as text (a built-in name, points:FILE, folder:DIR?...), "" = none recorded
    data: dict[str, Any] | None = None  # the DataSpec record (path, options, fingerprint) that finds it again
    kind: str = "image"  # image | vector | latent (a pipeline: samplers draw latents, `image_shape` after decoding)
    shape: list[int] = field(default_factory=list)  # what samplers draw
    image_shape: list[int] = field(default_factory=list)  # a latent model's decoded images; empty otherwise
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "heun", "schedule": "karras", "steps": 18})
    teacher: str | None = None
    consistency: dict[str, float] | None = None  # {"sigma_min", "scale"}: wrap D in core.precond.ConsistencyBoundary
    acceleration: dict[str, Any] | None = None  # {"cache", "guidance", "cfg_scale", "cfg_interval"}: fewstep accelerate
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: Path) -> "ModelInfo":
        """The record in a fewstep.json; a malformed file or a value of the wrong type is a one-line UserError."""
        from fewstep.config import build_config
        from fewstep.core.files import read_json

        data = read_json(path, "a valid fewstep.json")
        if not isinstance(data, dict) or not {"arch", "network_class"} <= set(data):
            raise UserError(f"{path} is not a valid fewstep.json (it needs a JSON object with arch and network_class)")
        data.pop("fewstep_version", None)
        return build_config(cls, data, where=str(path))


def image_size(info: ModelInfo) -> int | None:
    """The side of a model's items when they are images (the resolution its data is read at), else None."""
    return info.shape[-1] if info.kind == "image" else None


@dataclass
class LoadedModel:
    """A denoiser ready to sample, the network inside it, its recorded info and, for a text-to-image pipeline, its
    frozen prompt encoder and autoencoder (fewstep.models.text, fewstep.models.autoencoder)."""

    denoiser: nn.Module
    network: nn.Module
    info: ModelInfo
    path: Path
    prompt_encoder: nn.Module | None = None
    autoencoder: nn.Module | None = None

    def encode_prompts(self, prompts: Sequence[str], negative: str | Sequence[str] | None = None) -> Cond:
        """The condition of one row per prompt; its null condition is `negative` (default: the pipeline's own)."""
        if self.prompt_encoder is None:
            raise UserError("a prompt was given, but this model has no text encoder; "
                            + ("give class labels instead" if self.info.num_classes else "it is unconditional"))
        return self.prompt_encoder.encode(prompts, negative)

    def decode(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images in [-1, 1] from what the sampler drew: decoded by the autoencoder, batch_size latents at a time, on
        the autoencoder's device and returned on the latents' device; or as they are (pixel models)."""
        if self.autoencoder is None:
            return latents
        device = next(self.autoencoder.parameters()).device
        return torch.cat([self.autoencoder.decode(latents[i:i + batch_size].to(device)).to(latents.device)
                          for i in range(0, len(latents), batch_size)])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """What the sampler draws, from images in [-1, 1]: the autoencoder's latents, or the images themselves."""
        return images if self.autoencoder is None else self.autoencoder.encode(images)


def prompt_cond(model: LoadedModel, prompts: Sequence[str], n: int, negative_prompt: str | None = None) -> Cond:
    """The condition of n samples, sample i on prompts[i mod len(prompts)]: each distinct prompt encoded once,
    without gradients; the null condition of guidance is `negative_prompt` (default: the pipeline's own)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise UserError("no prompts given; pass --prompt TEXT or --prompts FILE")
    row_of = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    rows = torch.tensor([row_of[prompts[i % len(prompts)]] for i in range(n)])
    return model.encode_prompts(list(row_of), negative_prompt).select(rows)


def default_cfg_scale(model: LoadedModel) -> float:
    """The CFG scale a model samples with unless told otherwise: its record's, else TEXT_CFG_SCALE for a
    text-to-image model, else 1 (no guidance)."""
    recorded = (model.info.acceleration or {}).get("cfg_scale")
    return recorded if recorded is not None else TEXT_CFG_SCALE if model.prompt_encoder is not None else 1.0
