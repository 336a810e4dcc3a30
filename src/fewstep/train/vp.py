"""Stable Diffusion's training objective for a text-conditioned latent U-Net (DDPM, Ho et al. 2020, eq. 14; v:
Salimans & Ho 2022): a uniform discrete timestep t, x_t = sqrt(a_t) y + sqrt(1 - a_t) n, and the squared error of
the predicted noise (or velocity v = sqrt(a_t) n - sqrt(1 - a_t) y). Captions are dropped to the empty prompt with
probability `prompt_dropout`, so the same network is the unconditional model of classifier-free guidance.
"""

from __future__ import annotations

import torch
from torch import nn

from fewstep.core.cond import Cond
from fewstep.core.errors import UserError
from fewstep.data.batches import Batch

PREDICTIONS = ("epsilon", "v_prediction")


def dropped_captions(batch: Batch, prompt_dropout: float) -> list[str]:
    """The batch's captions, each replaced by the empty prompt with probability prompt_dropout (for CFG)."""
    dropped = (batch.rand() < prompt_dropout).tolist()
    return ["" if drop else caption for caption, drop in zip(batch.text, dropped)]


class TextToImageNetwork(nn.Module):
    """A U-Net and its CLIP text encoder as one trained module (a frozen encoder has no gradients)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, train_text_encoder: bool):
        super().__init__()
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        self.train_text_encoder = train_text_encoder
        text_encoder.requires_grad_(train_text_encoder)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Prompt embeddings as StableDiffusionPipeline computes them: the last hidden states of max-length tokens."""
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.text_encoder(tokens.input_ids.to(self.unet.device))[0]

    def cond(self, captions: list[str]) -> Cond:
        """The captions' condition as the pipeline builds it."""
        return Cond(text=self.encode(captions))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self.unet(x_t, t, self.encode(captions)).sample


class VPTextTraining:
    """Noise (or v) regression at uniform discrete timesteps on SD's schedule, with prompt dropout."""

    def __init__(self, network: TextToImageNetwork, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 prompt_dropout: float = 0.1):
        if prediction_type not in PREDICTIONS:
            raise UserError(f"unknown prediction type {prediction_type!r}; choose {' or '.join(PREDICTIONS)}")
        self.modules = {"model": network}
        self.ema_modules = ("model",)
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type, self.prompt_dropout = prediction_type, prompt_dropout

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch.x
        steps = len(self.alphas_cumprod)
        t = (batch.rand() * steps).long().clamp(max=steps - 1)
        noise = batch.randn(*y.shape[1:])
        captions = dropped_captions(batch, self.prompt_dropout)
        a = self.alphas_cumprod.to(y.device)[t].view(-1, *[1] * (y.ndim - 1))
        x_t = a.sqrt() * y + (1 - a).sqrt() * noise
        target = noise if self.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * y
        return {"model": ((self.modules["model"](x_t, t.to(y.device), captions) - target) ** 2).mean()}
