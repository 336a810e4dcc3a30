"""DeepCache (Ma et al. 2023): between full calls, reuse the U-Net's deep features and run only its shallow branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fewstep.accel.keysteps import KeySteps
from fewstep.accel.unet import UNetCacheHandle, decode, unet_of
from fewstep.core.errors import UserError


@dataclass
class DeepCacheConfig(KeySteps):
    """Full calls as in KeySteps; a cached call runs down blocks 0..branch and the matching last up blocks.

    branch 0 is the shallowest (cheapest) branch; branch = len(down_blocks) - 1 skips only the mid block.
    """

    branch: int = 0


class DeepCacheHandle(UNetCacheHandle):
    """A full call keeps the input of up block n-1-branch (the deep feature, DeepCache's cached U_{m+1} output); a
    cached call recomputes conv_in and down blocks 0..branch (the branch's own downsampler is not needed), then runs
    up blocks n-1-branch..n-1 on the kept deep feature and the fresh skip features."""

    name = "deepcache"

    def __init__(self, unet: torch.nn.Module, config: DeepCacheConfig):
        n = len(unet.down_blocks)
        if not 0 <= config.branch < n:
            raise UserError(f"deepcache: branch must lie in 0..{n - 1} for this U-Net, got {config.branch}")
        self.branch, self.start = config.branch, n - 1 - config.branch
        super().__init__(unet, config, range(self.start, self.start + 1))

    def cached_forward(self, sample: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        hidden = unet.conv_in(sample)
        res_samples = (hidden,)
        for block in unet.down_blocks[:self.branch]:
            hidden, states = block(hidden_states=hidden, temb=emb)
            res_samples += states
        block = unet.down_blocks[self.branch]
        for i, resnet in enumerate(block.resnets):  # the branch block's layers without its downsampler
            hidden = resnet(hidden, emb)
            if hasattr(block, "attentions"):
                hidden = block.attentions[i](hidden)
            res_samples += (hidden,)
        deep, _ = self.inputs[self.start]
        return decode(unet, deep, res_samples, emb, self.start)


def apply_deepcache(model: Any, config: DeepCacheConfig) -> DeepCacheHandle:
    """Apply DeepCache to the UNet2DModel inside `model` (a network, denoiser or LoadedModel)."""
    return DeepCacheHandle(unet_of(model, "deepcache"), config)
