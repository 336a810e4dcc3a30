"""Feature caches for a diffusers UNet2DModel: full calls run its own forward and keep up-block inputs; cached calls
run only the parts a subclass chooses (DeepCache: the shallow branch; encoder propagation: the decoder).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from fewstep.accel.base import AcceleratorHandle, find_network, unwrap_forward, wrap_forward
from fewstep.accel.keysteps import KeySteps
from fewstep.core.errors import UserError

PLAIN_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")


def unet_of(target: Any, accelerator: str) -> nn.Module:
    """The UNet2DModel inside target, checked to be one the caches can run in pieces."""
    from diffusers import UNet2DModel

    unet = find_network(target, UNet2DModel, accelerator)
    kinds = {type(b).__name__ for b in unet.down_blocks}
    if not kinds <= set(PLAIN_DOWN_BLOCKS) or any(hasattr(b, "skip_conv") for b in unet.up_blocks):
        raise UserError(f"{accelerator} supports U-Nets of {' and '.join(PLAIN_DOWN_BLOCKS)} (no skip blocks); "
                        f"this one has {', '.join(sorted(kinds))}")
    return unet


def embedding(unet: nn.Module, sample: torch.Tensor, timestep: Any,
              class_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet2DModel.forward's step 1: the time (+ class) embedding, and the timesteps broadcast to the batch."""
    timesteps = torch.as_tensor(timestep, device=sample.device)
    timesteps = timesteps.reshape(-1) * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=sample.device)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype))
    if unet.class_embedding is not None:
        if class_labels is None:
            raise ValueError("class_labels should be provided when doing class conditioning")
        if unet.config.class_embed_type == "timestep":
            class_labels = unet.time_proj(class_labels)
        emb = emb + unet.class_embedding(class_labels).to(dtype=unet.dtype)
    return emb, timesteps


def decode(unet: nn.Module, hidden: torch.Tensor, res_samples: tuple[torch.Tensor, ...], emb: torch.Tensor,
           start: int) -> torch.Tensor:
    """UNet2DModel.forward's steps 5-6 from up block `start`: each block takes its skip features off the end."""
    for block in unet.up_blocks[start:]:
        k = len(block.resnets)
        hidden, res_samples = block(hidden, res_samples[-k:], emb), res_samples[:-k]
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
    return sample


class UNetCacheHandle(AcceleratorHandle):
    """Wraps one UNet2DModel instance's forward; `cached_forward` says what a cached call runs."""

    name = "unet cache"

    def __init__(self, unet: nn.Module, steps: KeySteps, captured: range):
        super().__init__()
        self.unet, self.steps = unet, steps
        self.inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}  # up block -> (hidden, skips)
        self._capturing = False
        self._hooks = [unet.up_blocks[j].register_forward_pre_hook(partial(self._capture, j), with_kwargs=True)
                       for j in captured]
        wrap_forward(unet, self.forward, self.name)

    def _capture(self, j: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capturing:
            self.inputs[j] = (args[0], args[1])

    def forward(self, sample: torch.Tensor, timestep: Any, class_labels: torch.Tensor | None = None,
                return_dict: bool = True) -> Any:
        call = self.begin_call(sample, timestep)
        if self.steps.is_full(call) or not self.inputs:
            self.full_calls += 1
            self._capturing = True
            try:
                return type(self.unet).forward(self.unet, sample, timestep, class_labels, return_dict)
            finally:
                self._capturing = False
        self.cached_calls += 1
        emb, timesteps = embedding(self.unet, sample, timestep, class_labels)
        out = self.cached_forward(sample, emb)
        if self.unet.config.time_embedding_type == "fourier":
            out = out / timesteps.reshape(-1, *[1] * (out.ndim - 1))
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=out) if return_dict else (out,)

    def cached_forward(self, sample: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The network output F of a cached call, from the input, the embedding and self.inputs."""
        raise NotImplementedError

    def clear(self) -> None:
        self.inputs = {}

    def detach(self) -> None:
        unwrap_forward(self.unet)
        for hook in self._hooks:
            hook.remove()
