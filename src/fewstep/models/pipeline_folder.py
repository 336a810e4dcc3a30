"""Read a user's Stable-Diffusion-layout text-to-image pipeline folder (safetensors, nothing downloaded)."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from fewstep.core.errors import UserError
from fewstep.models.info import LoadedModel, ModelInfo
from fewstep.models.weights import refuse_pickle

# pipeline class -> {component: the classes fewstep reads for it}
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
PIPELINES = {
    "StableDiffusionPipeline": {"unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",),
                                "text_encoder": ("CLIPTextModel",), "tokenizer": TOKENIZERS,
                                "scheduler": None},
    "StableDiffusionXLPipeline": {"unet": ("UNet2DConditionModel",), "vae": ("AutoencoderKL",),
                                  "text_encoder": ("CLIPTextModel",), "tokenizer": TOKENIZERS,
                                  "text_encoder_2": ("CLIPTextModelWithProjection",), "tokenizer_2": TOKENIZERS,
                                  "scheduler": None},
    "StableDiffusion3Pipeline": {"transformer": ("SD3Transformer2DModel",), "vae": ("AutoencoderKL",),
                                 "text_encoder": ("CLIPTextModelWithProjection",), "tokenizer": TOKENIZERS,
                                 "text_encoder_2": ("CLIPTextModelWithProjection",), "tokenizer_2": TOKENIZERS,
                                 "scheduler": None},
}
# components a pipeline may leave out (null in model_index.json): SD3 without its T5 encoder
OPTIONAL = {"StableDiffusion3Pipeline": {"text_encoder_3": ("T5EncoderModel",),
                                         "tokenizer_3": ("T5TokenizerFast", "T5Tokenizer")}}
SD3_T5_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length: the T5 (or zero) tokens
# UNet2DConditionModel settings that need inputs a text-to-image pipeline of these classes does not give
UNET_REFUSED = {"time_cond_proj_dim": "a guidance-scale embedding (an LCM-distilled U-Net's w input)",
                "encoder_hid_dim_type": "projected image or text embeddings (IP-Adapter / Kandinsky style)",
                "class_embed_type": "a class embedding", "num_class_embeds": "class labels"}


def is_text_pipeline(folder: Path) -> bool:
    """Whether a folder's model_index.json describes a text-conditioned pipeline: it names a text encoder or
    tokenizer (an SD3 pipeline saved without them, text_encoder = [null, null], is a bare transformer)."""
    index = folder / "model_index.json"
    if not index.exists():
        return False
    data = json.loads(index.read_text())
    return any(k.startswith(("text_encoder", "tokenizer")) and isinstance(v, list) and v[:1] != [None]
               for k, v in data.items())


def _components(folder: Path) -> tuple[str, dict, dict]:
    """The pipeline class, its components' library classes (checked against what fewstep reads) and its index."""
    index = json.loads((folder / "model_index.json").read_text())
    name = index.get("_class_name", "")
    if name not in PIPELINES:
        raise UserError(f"{folder}: {name or 'this pipeline'} is not supported; fewstep reads text-to-image "
                        f"{' and '.join(PIPELINES)} folders")
    classes = {}
    for part, allowed in PIPELINES[name].items():
        entry = index.get(part) or [None, None]
        if entry[1] is None or not (folder / part).is_dir():
            raise UserError(f"{folder}: the pipeline's {part}/ component is missing; save the whole pipeline with "
                            "save_pretrained(folder, safe_serialization=True)")
        if allowed is not None and entry[1] not in allowed:
            raise UserError(f"{folder}: {part} is a {entry[1]}; fewstep reads {' or '.join(allowed)} there")
        classes[part] = entry[1]
    for part, allowed in OPTIONAL.get(name, {}).items():
        entry = index.get(part) or [None, None]
        if entry[1] is not None and entry[1] not in allowed:
            raise UserError(f"{folder}: {part} is a {entry[1]}; fewstep reads {' or '.join(allowed)} there")
        if entry[1] is not None:
            classes[part] = entry[1]
    given = [part for part in OPTIONAL.get(name, {}) if part in classes]
    if len(given) not in (0, len(OPTIONAL.get(name, {}))):
        raise UserError(f"{folder}: the pipeline has {given[0]} but not its partner; save both or neither")
    return name, classes, index


def _load(cls, path: Path, weights: bool = True):
    if weights:
        refuse_pickle(path)
    try:
        return cls.from_pretrained(path, local_files_only=True, **({"use_safetensors": True} if weights else {}))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: could not be read ({str(e).splitlines()[0]})") from None


def _check_unet(unet, where: Path, xl: bool) -> None:
    cfg = unet.config
    for key, what in UNET_REFUSED.items():
        if cfg.get(key) is not None:
            raise UserError(f"{where}: this U-Net's {key}={cfg[key]!r} needs {what}, which fewstep does not supply")
    added = cfg.get("addition_embed_type")
    if added != ("text_time" if xl else None):
        raise UserError(f"{where}: addition_embed_type={added!r} does not fit a "
                        f"{'StableDiffusionXLPipeline' if xl else 'StableDiffusionPipeline'}; fewstep reads "
                        f"{'text_time' if xl else 'none'} there")


def load_pipeline_folder(folder: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A StableDiffusion(XL / 3)Pipeline folder as a latent, text-conditioned EDM denoiser with its encoders and VAE."""
    import diffusers
    import transformers

    from fewstep.models.autoencoder import LatentAutoencoder
    from fewstep.models.diffusers_adapter import DiffusersVPDenoiser
    from fewstep.models.schedulers import read_scheduler, scheduler_sigmas
    from fewstep.models.text import PromptEncoder

    name, classes, index = _components(folder)
    if name == "StableDiffusion3Pipeline":
        return _load_sd3(folder, classes, device)
    xl = name == "StableDiffusionXLPipeline"
    sched_file = folder / "scheduler" / "scheduler_config.json"
    if not sched_file.exists():
        raise UserError(f"{folder}: scheduler/ has no scheduler_config.json; save the pipeline with save_pretrained")
    schedule = read_scheduler(json.loads(sched_file.read_text()), str(folder / "scheduler"))
    unet = _load(diffusers.UNet2DConditionModel, folder / "unet").eval().requires_grad_(False)
    _check_unet(unet, folder / "unet", xl)
    autoencoder = LatentAutoencoder(_load(diffusers.AutoencoderKL, folder / "vae"))
    suffixes = ["", "_2"] if xl else [""]
    tokenizers = [_load(transformers.CLIPTokenizer, folder / f"tokenizer{s}", weights=False) for s in suffixes]
    encoders = [_load(getattr(transformers, classes[f"text_encoder{s}"]), folder / f"text_encoder{s}")
                for s in suffixes]
    sample_size = unet.config.sample_size
    latent_hw = [sample_size] * 2 if isinstance(sample_size, int) else list(sample_size)
    image_hw = [n * autoencoder.downscale for n in latent_hw]
    # SDXL's added time ids: original size, crop top-left, target size (the pipeline's defaults)
    prompts = PromptEncoder(tokenizers, encoders, time_ids=[*image_hw, 0, 0, *image_hw] if xl else None,
                            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt")))
    denoiser = DiffusersVPDenoiser(unet, schedule.alphas_cumprod, schedule.prediction_type,
                                   timestep_map=schedule.timestep_map, boundary_scaling=schedule.boundary_scaling)
    denoiser.sigma_range = replace(denoiser.sigma_range, scheduler=partial(scheduler_sigmas, schedule))
    info = ModelInfo(arch="unet", network_class="UNet2DConditionModel", parameterization=schedule.prediction_type,
                     sigma_min=denoiser.sigma_range.sigma_min, sigma_max=denoiser.sigma_range.sigma_max,
                     kind="latent", shape=[unet.config.in_channels, *latent_hw],
                     image_shape=[autoencoder.vae.config.out_channels, *image_hw], sampler=schedule.sampler,
                     extra={"pipeline": name, "scheduler": type(schedule.scheduler).__name__,
                            "num_train_timesteps": len(schedule.alphas_cumprod)})
    return LoadedModel(denoiser.to(device).eval(), unet, info, folder, prompts.to(device), autoencoder.to(device))


def _load_sd3(folder: Path, classes: dict, device: str | torch.device) -> LoadedModel:
    """A StableDiffusion3Pipeline folder: its flow transformer (models/transformers.py) with its VAE and its two CLIP
    encoders (and T5, when the folder has one); prompts are encoded as the pipeline encodes them."""
    import diffusers
    import transformers

    from fewstep.models.autoencoder import LatentAutoencoder
    from fewstep.models.info import FEWSTEP_JSON
    from fewstep.models.text import PromptEncoder
    from fewstep.models.transformers import load_transformer_folder

    found = load_transformer_folder(folder, device)
    autoencoder = LatentAutoencoder(_load(diffusers.AutoencoderKL, folder / "vae"))
    suffixes = ["", "_2", "_3"] if "text_encoder_3" in classes else ["", "_2"]
    tokenizers = [_load(getattr(transformers, classes[f"tokenizer{s}"]), folder / f"tokenizer{s}", weights=False)
                  for s in suffixes]
    encoders = [_load(getattr(transformers, classes[f"text_encoder{s}"]), folder / f"text_encoder{s}")
                for s in suffixes]
    record = folder / FEWSTEP_JSON  # a fewstep teacher records the T5 length it was trained with
    extra = json.loads(record.read_text()).get("extra", {}) if record.exists() else {}
    t5_length = int(extra.get("max_sequence_length", SD3_T5_LENGTH))
    prompts = PromptEncoder(tokenizers, encoders, joint=(found.network.config.joint_attention_dim, t5_length))
    latent_hw = found.info.shape[1:]
    info = replace(found.info, kind="latent", image_shape=[autoencoder.vae.config.out_channels,
                                                           *[n * autoencoder.downscale for n in latent_hw]],
                   extra={**found.info.extra, "pipeline": "StableDiffusion3Pipeline", "max_sequence_length": t5_length})
    return LoadedModel(found.denoiser, found.network, info, folder, prompts.to(device), autoencoder.to(device))
