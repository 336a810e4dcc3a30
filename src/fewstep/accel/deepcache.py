"""DeepCache (Ma et al. 2023): between full calls, reuse the U-Net's deep features and run only its shallow branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fewstep.accel.keysteps import KeySteps
from fewstep.accel.unet import UNetCacheHandle, decode, encode_layers, unet_of
from fewstep.core.errors import UserError


@dataclass
class DeepCacheConfig(KeySteps):
    """Full calls as in KeySteps; a cached call runs down blocks 0..branch-1, the first `layer` layers of down block
    `branch` and the matching last layers of the up path.

    branch 0 is the shallowest (cheapest) branch; layer -1 (all the block's layers) with branch = len(down_blocks) - 1
    skips only the mid block. The DeepCache package's cache_branch_id is 3 branch + layer (layer = layers_per_block
    for -1), its cache_interval our interval.
    """

    branch: int = 0
    layer: int = -1


class DeepCacheHandle(UNetCacheHandle):
    """A full call keeps the input of the deepest up-path layer a cached call runs (DeepCache's cached feature): the
    input of up block n-1-branch, or the output of its layer L-1-layer (L = layers_per_block); a cached call
    recomputes conv_in, down blocks 0..branch-1 and the first `layer` layers of block `branch` (not its downsampler:
    only skipped layers read it), then the up path from that layer on with the kept feature and the fresh skips."""

    name = "deepcache"

    def __init__(self, unet: torch.nn.Module, config: DeepCacheConfig):
        n = len(unet.down_blocks)
        if not 0 <= config.branch < n:
            raise UserError(f"deepcache: branch must lie in 0..{n - 1} for this U-Net, got {config.branch}")
        layers = len(unet.down_blocks[config.branch].resnets)
        if not -1 <= config.layer <= layers:
            raise UserError(f"deepcache: layer must lie in 0..{layers} (or -1, the whole block) for branch "
                            f"{config.branch}, got {config.layer}")
        self.branch, self.start = config.branch, n - 1 - config.branch
        self.layer = layers if config.layer == -1 else config.layer
        self.first = layers - self.layer  # the first up-block layer a cached call runs (the up block has L + 1)
        super().__init__(unet, config, range(self.start, self.start + 1) if self.first == 0 else range(0))
        if self.first:
            up = unet.up_blocks[self.start]
            before = up.attentions[self.first - 1] if hasattr(up, "attentions") else up.resnets[self.first - 1]
            self._hooks.append(before.register_forward_hook(self._capture_layer))

    def _capture_layer(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self._capturing:
            self.inputs[self.start] = (output[0] if isinstance(output, tuple) else getattr(output, "sample", output), ())

    def cached_forward(self, sample: torch.Tensor, emb: torch.Tensor, cross: dict,
                       forward_upsample_size: bool) -> torch.Tensor:
        unet = self.unet
        hidden = unet.conv_in(sample)
        res_samples = (hidden,)
        for block in unet.down_blocks[:self.branch]:
            if getattr(block, "has_cross_attention", False):
                hidden, states = block(hidden_states=hidden, temb=emb, **cross)
            else:
                hidden, states = block(hidden_states=hidden, temb=emb)
            res_samples += states
        hidden, states = encode_layers(unet.down_blocks[self.branch], hidden, emb, cross, self.layer)
        deep, _ = self.inputs[self.start]
        return decode(unet, deep, res_samples + states, emb, self.start, cross, forward_upsample_size, self.first)


def apply_deepcache(model: Any, config: DeepCacheConfig) -> DeepCacheHandle:
    """Apply DeepCache to the diffusers U-Net inside `model` (a network, denoiser or LoadedModel)."""
    return DeepCacheHandle(unet_of(model, "deepcache"), config)
