"""A user's diffusers transformer (DiT, PixArt, SD3, Flux) folder as an EDM denoiser, fed as its pipeline feeds it.

Each transformer has a call (network, x_t, the scheduler's timestep, cond) -> prediction that copies its diffusers
pipeline: DiT and PixArt take the timestep as is and predict epsilon with a learned variance (the first half of the
output channels is epsilon); SD3 takes t * 1000, Flux t (it multiplies by 1000 itself) and a guidance embedding,
on packed 2x2 latents with image ids. Its scheduler config picks the parameterization: a flow-matching scheduler
gives a FlowMatchDenoiser, a VP scheduler a DiffusersVPDenoiser. Samplers see ordinary [C, H, W] latents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fewstep.core.cond import Cond, CondLike, labels_or_null
from fewstep.core.errors import UserError
from fewstep.models.diffusers_adapter import PREDICTION_TYPES, DiffusersVPDenoiser, TimestepCall
from fewstep.models.flow import FLOW_SCHEDULERS, FlowMatchDenoiser, default_sampling, read_flow_scheduler
from fewstep.models.info import LoadedModel, ModelInfo
from fewstep.models.weights import load_network

FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, fed to a guidance-distilled Flux's embedding
FLUX_LATENT_SIZE = 128  # FluxPipeline's default size: default_sample_size 128 latents (1024 px with an 8x VAE)


def learned_sigma_eps(net: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Epsilon of a network that also predicts its variance: the first half of the channels, as DiT/PixArt pipelines."""
    channels = net.config.in_channels
    return out[:, :channels] if net.config.out_channels // 2 == channels else out


def prompt(cond: CondLike, model: str, pooled: bool = False) -> Cond:
    """The text condition a text-conditioned transformer needs; one line if it is missing."""
    if not isinstance(cond, Cond) or cond.text is None or (pooled and cond.pooled is None):
        need = "text and pooled prompt embeddings" if pooled else "prompt embeddings"
        raise UserError(f"{model} is text-conditioned: sample it with a Cond holding {need}")
    return cond


def dit_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: CondLike) -> torch.Tensor:
    """DiTPipeline: class labels (the null label num_embeds_ada_norm when unconditional), learned-sigma epsilon."""
    labels = labels_or_null(cond, net.config.num_embeds_ada_norm, x_t.shape[0], x_t.device)
    return learned_sigma_eps(net, net(x_t, timestep=timestep, class_labels=labels).sample)


def pixart_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: CondLike,
                vae_scale_factor: int = 8) -> torch.Tensor:
    """PixArtAlphaPipeline: T5 embeddings and mask; resolution and aspect ratio for the 1024 px models."""
    c = prompt(cond, "PixArtTransformer2DModel")
    added = {"resolution": None, "aspect_ratio": None}
    if net.use_additional_conditions:  # micro-conditions: the pixel size, unless the Cond brings its own
        b, h, w = x_t.shape[0], x_t.shape[-2] * vae_scale_factor, x_t.shape[-1] * vae_scale_factor
        added = {"resolution": c.added.get("resolution", torch.tensor([[h, w]] * b, dtype=x_t.dtype)).to(x_t),
                 "aspect_ratio": c.added.get("aspect_ratio", torch.tensor([[h / w]] * b, dtype=x_t.dtype)).to(x_t)}
    out = net(x_t, encoder_hidden_states=c.text, encoder_attention_mask=c.mask, timestep=timestep,
              added_cond_kwargs=added).sample
    return learned_sigma_eps(net, out)


def sd3_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: CondLike) -> torch.Tensor:
    """StableDiffusion3Pipeline: joint text embeddings and pooled embeddings, timestep t * 1000."""
    c = prompt(cond, "SD3Transformer2DModel", pooled=True)
    return net(hidden_states=x_t, timestep=timestep, encoder_hidden_states=c.text, pooled_projections=c.pooled,
               return_dict=False)[0]


def flux_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: CondLike) -> torch.Tensor:
    """FluxPipeline: 2x2-packed latents with their image ids, zero text ids, timestep / 1000, guidance embedding.

    A guidance-distilled Flux takes its guidance scale from the Cond's added["guidance"] (per row), else 3.5.
    """
    from diffusers import FluxPipeline

    c = prompt(cond, "FluxTransformer2DModel", pooled=True)
    b, channels, h, w = x_t.shape
    packed = FluxPipeline._pack_latents(x_t, b, channels, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
    txt_ids = torch.zeros(c.text.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
    guidance = None
    if net.config.guidance_embeds:
        guidance = c.added.get("guidance", torch.full((b,), FLUX_GUIDANCE)).to(x_t)
    v = net(hidden_states=packed, timestep=timestep / 1000, guidance=guidance, pooled_projections=c.pooled,
            encoder_hidden_states=c.text, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    return FluxPipeline._unpack_latents(v, h, w, 1)


@dataclass(frozen=True)
class TransformerSpec:
    """How fewstep feeds one diffusers transformer class, and what its pipeline does by default."""

    call: TimestepCall
    text_conditioned: bool
    steps: int  # the pipeline's default num_inference_steps
    token_patch: Callable[[Any], int] = lambda cfg: cfg.patch_size  # latent pixels per token side
    latent_size: Callable[[Any], int] = lambda cfg: cfg.sample_size  # the pipeline's default latent height/width
    latent_channels: Callable[[Any], int] = lambda cfg: cfg.in_channels
    pipeline_sigmas: bool = False  # the pipeline passes sigmas = linspace(1, 1/n, n) to set_timesteps (Flux)


TRANSFORMERS: dict[str, TransformerSpec] = {
    "DiTTransformer2DModel": TransformerSpec(dit_call, text_conditioned=False, steps=50),
    "PixArtTransformer2DModel": TransformerSpec(pixart_call, text_conditioned=True, steps=20),
    "SD3Transformer2DModel": TransformerSpec(sd3_call, text_conditioned=True, steps=28),
    "FluxTransformer2DModel": TransformerSpec(flux_call, text_conditioned=True, steps=28, token_patch=lambda cfg: 2,
                                              latent_size=lambda cfg: FLUX_LATENT_SIZE,
                                              latent_channels=lambda cfg: cfg.in_channels // 4, pipeline_sigmas=True),
}


def is_transformer_folder(folder: Path) -> bool:
    """Whether a folder is a diffusers transformer: a pipeline with transformer/, or a bare *Transformer* model."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return "transformer" in json.loads((folder / "model_index.json").read_text())
    if (folder / "config.json").exists():
        return "Transformer" in json.loads((folder / "config.json").read_text()).get("_class_name", "")
    return False


def _find(folder: Path) -> tuple[Path, Path, Path | None]:
    """(transformer folder, scheduler config, VAE config or None) of a pipeline or a bare transformer folder."""
    if (folder / "model_index.json").exists():
        net_dir, sched, vae = folder / "transformer", folder / "scheduler" / "scheduler_config.json", folder / "vae"
        return net_dir, sched, vae / "config.json" if (vae / "config.json").exists() else None
    sched = folder / "scheduler_config.json"
    if not sched.exists():
        sched = folder / "scheduler" / "scheduler_config.json"
    return folder, sched, None


def _vp_denoiser(net: nn.Module, call: TimestepCall, config: dict[str, Any]) -> DiffusersVPDenoiser:
    """A VP transformer (DiT, PixArt) behind the adapter of its discrete scheduler's alphas_cumprod."""
    import diffusers

    name = config.get("_class_name", "")
    scheduler = getattr(diffusers, name, None)
    scheduler = scheduler.from_config(config) if scheduler is not None and name.endswith("Scheduler") else None
    prediction = config.get("prediction_type", "epsilon")
    if not hasattr(scheduler, "alphas_cumprod"):
        raise UserError(f"scheduler {name!r} is neither a flow-matching ({', '.join(FLOW_SCHEDULERS)}) nor a "
                        "discrete VP scheduler fewstep reads")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"{name} with prediction_type {prediction!r} is not supported; fewstep reads "
                        f"{', '.join(PREDICTION_TYPES)}, or a FlowMatchEulerDiscreteScheduler for flow models")
    return DiffusersVPDenoiser(net, scheduler.alphas_cumprod, prediction, call=call)


def load_transformer_folder(folder: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A diffusers DiT / PixArt / SD3 / Flux transformer and its scheduler config (bare or a pipeline) as a denoiser."""
    folder = Path(folder)
    net_dir, sched_path, vae_path = _find(folder)
    if not (net_dir / "config.json").exists():
        raise UserError(f"{net_dir} has no config.json; expected a diffusers transformer folder")
    class_name = json.loads((net_dir / "config.json").read_text()).get("_class_name", "")
    if class_name not in TRANSFORMERS:
        raise UserError(f"{net_dir}: fewstep reads the transformers {', '.join(TRANSFORMERS)}, not {class_name!r}")
    if not sched_path.exists():
        raise UserError(f"{folder}: no scheduler_config.json beside the transformer; save the scheduler too")
    sched_cfg = json.loads(sched_path.read_text())
    spec = TRANSFORMERS[class_name]
    call = spec.call
    if class_name == "PixArtTransformer2DModel" and vae_path is not None:  # the pipeline's pixel size per latent
        vae_scale_factor = 2 ** (len(json.loads(vae_path.read_text())["block_out_channels"]) - 1)
        call = partial(pixart_call, vae_scale_factor=vae_scale_factor)
    net = load_network(net_dir, class_name)
    cfg = net.config
    size = spec.latent_size(cfg)
    shape = [spec.latent_channels(cfg), size, size]
    num_classes = cfg.num_embeds_ada_norm if class_name == "DiTTransformer2DModel" else 0
    if sched_cfg.get("_class_name") in FLOW_SCHEDULERS:
        tokens = (size // spec.token_patch(cfg)) ** 2  # the image sequence length of dynamic shifting
        denoiser = FlowMatchDenoiser(net, call, read_flow_scheduler(sched_cfg, tokens, spec.pipeline_sigmas),
                                     num_classes=num_classes, text_conditioned=spec.text_conditioned)
        parameterization, sampler = "flow", default_sampling(sched_cfg, spec.steps)
    else:
        denoiser = _vp_denoiser(net, call, sched_cfg)
        denoiser.num_classes, denoiser.text_conditioned = num_classes, spec.text_conditioned
        parameterization = sched_cfg.get("prediction_type", "epsilon")
        sampler = {"name": "ddim", "schedule": "uniform", "steps": spec.steps}
    from fewstep.models.networks import arch_of

    info = ModelInfo(arch=arch_of(net), network_class=class_name, parameterization=parameterization,
                     sigma_min=denoiser.sigma_range.sigma_min, sigma_max=denoiser.sigma_range.sigma_max,
                     num_classes=num_classes, dataset="", kind="image", shape=shape, sampler=sampler,
                     extra={"scheduler": sched_cfg.get("_class_name", ""), "text_conditioned": spec.text_conditioned})
    return LoadedModel(denoiser.to(device).eval(), net, info, folder)
