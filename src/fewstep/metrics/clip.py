"""CLIP score from a local CLIP folder (weights in safetensors, never downloaded): image-text agreement of samples."""

from __future__ import annotations

from pathlib import Path

import torch

from fewstep.core.errors import UserError

CLIP_BATCH = 64


def load_clip(folder: str | Path):
    """A CLIPModel (eval, no gradients) and its CLIPProcessor from a local folder holding model.safetensors."""
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError:
        raise UserError("CLIP score needs transformers: pip install 'fewstep[clip]'") from None
    folder = Path(folder).expanduser()
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder} holds no CLIP weights in safetensors; save a CLIPModel there with "
                        "save_pretrained(folder) (fewstep never downloads or unpickles weights)")
    try:
        model = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder} is not a CLIP folder (config.json, model.safetensors, tokenizer and image "
                        f"processor files): {str(e).splitlines()[0]}") from None
    return model.eval().requires_grad_(False), processor


def _pooled(out) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if torch.is_tensor(out) else out.pooler_output


@torch.no_grad()
def clip_similarities(images: torch.Tensor, captions: list[str], clip) -> torch.Tensor:
    """100 * cos(CLIP image embedding, CLIP text embedding) per image [N], for images in [-1, 1] and their captions.

    clip is load_clip's (model, processor), or the folder to load them from. Images are rounded to 8 bits, as the
    processor expects saved pictures, then resized and normalised by the folder's own image processor.
    """
    model, processor = load_clip(clip) if isinstance(clip, (str, Path)) else clip
    if len(images) != len(captions):
        raise UserError(f"CLIP needs one caption per image, got {len(images)} images and {len(captions)} captions")
    pixels = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    device, scores = next(model.parameters()).device, []
    max_tokens = model.config.text_config.max_position_embeddings
    for lo in range(0, len(images), CLIP_BATCH):
        batch = processor(text=captions[lo:lo + CLIP_BATCH], images=list(pixels[lo:lo + CLIP_BATCH]),
                          return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
        image = _pooled(model.get_image_features(pixel_values=batch["pixel_values"].to(device)))
        text = _pooled(model.get_text_features(input_ids=batch["input_ids"].to(device),
                                               attention_mask=batch["attention_mask"].to(device)))
        scores.append(100 * torch.cosine_similarity(image.double(), text.double(), dim=-1).cpu())
    return torch.cat(scores)


def clip_score(images: torch.Tensor, captions: list[str], clip) -> float:
    """max(mean of clip_similarities, 0): torchmetrics' CLIPScore (Hessel et al. 2021 with w = 100)."""
    return max(float(clip_similarities(images, captions, clip).mean()), 0.0)
