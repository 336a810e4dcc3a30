"""The captions flow teacher's network: an SD3Transformer2DModel and its two CLIP text encoders as one trained module,
fed as StableDiffusion3Pipeline feeds it (models/text.sd3_embeddings), so the exported pipeline needs no glue."""

from __future__ import annotations

import torch
from torch import nn

from fewstep.core.cond import Cond
from fewstep.models.text import sd3_embeddings

# SD3Transformer2DModel sizes per preset (tiny: the size of diffusers' own tests)
SD3_PRESETS = {"tiny": dict(num_layers=1, num_attention_heads=2, attention_head_dim=8),
               "small": dict(num_layers=4, num_attention_heads=4, attention_head_dim=32),
               "base": dict(num_layers=12, num_attention_heads=8, attention_head_dim=64)}


def build_sd3_transformer(preset: str, latent_shape: tuple[int, ...], clip_hidden: int, projection_dim: int):
    """A fresh SD3Transformer2DModel of the preset's size on patches of 2 latent pixels, for two CLIP encoders side by
    side (joint width 2 x hidden, pooled width 2 x projection), with SD3.5's RMS-normalised queries and keys."""
    from fewstep.models.tiny import tiny_sd3_transformer

    return tiny_sd3_transformer(clip_hidden, projection_dim, latent_shape[-1], latent_shape[0], qk_norm="rms_norm",
                                **SD3_PRESETS[preset])


class SD3TextNetwork(nn.Module):
    """An SD3 transformer and its CLIP encoders (trained with it, or frozen) predicting the flow's velocity."""

    def __init__(self, transformer: nn.Module, text_encoders: list[nn.Module], tokenizer, train_text_encoder: bool,
                 t5_length: int):
        super().__init__()
        self.transformer, self.text_encoders, self.tokenizer = transformer, nn.ModuleList(text_encoders), tokenizer
        self.train_text_encoder, self.t5_length = train_text_encoder, t5_length
        self.text_encoders.requires_grad_(train_text_encoder)

    def cond(self, captions: list[str]) -> Cond:
        """Text and pooled embeddings as StableDiffusion3Pipeline computes them (T5's place: zeros)."""
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return sd3_embeddings([self.tokenizer] * 2, list(self.text_encoders), captions,
                                  self.transformer.config.joint_attention_dim, self.t5_length)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, captions: list[str]) -> torch.Tensor:
        c = self.cond(captions)
        return self.transformer(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=c.text,
                                pooled_projections=c.pooled, return_dict=False)[0]
