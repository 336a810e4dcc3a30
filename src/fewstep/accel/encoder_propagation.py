"""Encoder propagation (Faster Diffusion, Li et al. 2023): on non-key calls reuse the U-Net encoder's features
(every skip feature and the mid block's output) from the last key call and run only the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fewstep.accel.keysteps import KeySteps
from fewstep.accel.unet import UNetCacheHandle, decode, unet_of


@dataclass
class EncoderPropagationConfig(KeySteps):
    """Key calls (the encoder runs) as in KeySteps; Faster Diffusion's own key steps are a full_steps list."""


class EncoderPropagationHandle(UNetCacheHandle):
    """A key call keeps every up block's inputs; a non-key call decodes them with the current time embedding.

    The current x reaches the output only through the denoiser's skip term c_skip x: the network sees the key call's
    encoder features (Li et al.'s propagation; their prior noise injection is not applied).
    """

    name = "encprop"

    def __init__(self, unet: torch.nn.Module, config: EncoderPropagationConfig):
        super().__init__(unet, config, range(len(unet.up_blocks)))

    def cached_forward(self, sample: torch.Tensor, emb: torch.Tensor, cross: dict,
                       forward_upsample_size: bool) -> torch.Tensor:
        hidden = self.inputs[0][0]
        skips = sum((self.inputs[j][1] for j in reversed(range(len(self.unet.up_blocks)))), ())
        return decode(self.unet, hidden, skips, emb, 0, cross, forward_upsample_size)


def apply_encoder_propagation(model: Any, config: EncoderPropagationConfig) -> EncoderPropagationHandle:
    """Apply encoder propagation to the diffusers U-Net inside `model` (a network, denoiser or LoadedModel)."""
    return EncoderPropagationHandle(unet_of(model, "encprop"), config)
