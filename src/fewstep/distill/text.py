"""What a text-to-image teacher changes in distillation: its items are the latents of captioned images, a batch's
condition is the prompt encoding of its captions, and data-free methods condition on a prompts file instead.

The autoencoder encodes the images once (cached on disk by teacher and data); the frozen text encoder encodes each
batch's captions without gradients (data.batches.TensorSource). Samplers, guidance and losses see only the `Cond`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewstep.core.errors import UserError
from fewstep.data import Dataset
from fewstep.models.info import LoadedModel

ENCODE_BATCH = 64  # images per autoencoder call when encoding the training items
PREVIEW_N = 16  # a text teacher's preview grid: the first 16 prompts, decoded


def check_text_teacher(model: LoadedModel, data: Dataset | None, prompts: str, negative_prompt: str) -> None:
    """One-line errors for data or options a teacher does not take: prompts without a text encoder, data without
    captions or of another size than the teacher's images."""
    if model.prompt_encoder is None:
        for flag, value in (("--prompts", prompts), ("--negative-prompt", negative_prompt)):
            if value:
                kind = "class-conditional" if model.info.num_classes else "unconditional"
                raise UserError(f"{flag} needs a text-to-image teacher (one with a text encoder); this one is {kind}")
        return
    if data is None:
        return
    name = data.spec or data.name
    if data.train_text is None:
        raise UserError(f"dataset {name} has no captions; a text-to-image teacher distils on captioned images "
                        "(or pass --prompts FILE to a data-free method)")
    if list(data.shape) != list(model.info.image_shape):
        raise UserError(f"dataset {name} has images of shape {list(data.shape)}, the teacher decodes "
                        f"{model.info.image_shape}")


def latent_items(model: LoadedModel, data: Dataset) -> torch.Tensor:
    """The teacher's latents of the training images: encoded once, in batches, without gradients, and cached with the
    autoencoder's hash and the images' digest (every method and run on this teacher and data reuses them)."""
    from safetensors.torch import load_file, save_file

    from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically
    from fewstep.models.weights import model_hash

    vae = model.path / "vae"
    settings = {"autoencoder": model_hash(vae if vae.is_dir() else model.path), "images": tensor_digest(data.train)}
    path = cache_path("latents", str(data.spec or data.name), settings_hash(settings), ".safetensors")
    if path.exists():
        return load_file(path)["latents"]
    device = next(model.autoencoder.parameters()).device
    with torch.no_grad():
        latents = torch.cat([model.encode(data.train[i:i + ENCODE_BATCH].to(device)).cpu()
                             for i in range(0, len(data.train), ENCODE_BATCH)])
    write_atomically(path, lambda tmp: save_file({"latents": latents.contiguous()}, str(tmp)))
    return latents


def cycled(prompts: list[str], n: int) -> list[str]:
    """n prompts, item i on prompts[i mod len(prompts)]."""
    return [prompts[i % len(prompts)] for i in range(n)]


def prompts_digest(prompts: list[str], negative_prompt: str) -> str:
    """A cache key's digest of the prompts and the null condition items were generated with."""
    from fewstep.metrics.cache import settings_hash

    return settings_hash({"prompts": prompts, "negative_prompt": negative_prompt})


def preview_on_prompts(model: LoadedModel, student: nn.Module, prompts: list[str], negative_prompt: str, path: Path,
                       sampler: str, sigmas: torch.Tensor) -> Path:
    """A fixed-seed grid of the student's samples on the first PREVIEW_N prompts (cycled), decoded to images and
    labelled by prompt (as the text-to-image teacher's training previews)."""
    from fewstep.data.visualize import save_prompt_grid
    from fewstep.samplers import generate
    from fewstep.train.teacher import GRID_SEED

    device = next(student.parameters()).device
    shown = cycled(prompts, PREVIEW_N)
    cond = model.encode_prompts(shown, negative_prompt or None)
    out = generate(student, model.info.shape, PREVIEW_N, sigmas, sampler, GRID_SEED, cond, device=device)
    return save_prompt_grid(model.decode(out.samples.to(device)).cpu(), shown, path)
