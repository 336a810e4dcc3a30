"""Feature caches for a diffusers U-Net (UNet2DModel, or a pipeline's text-conditioned UNet2DConditionModel): full
calls run its own forward and keep up-block inputs; cached calls run only the parts a subclass chooses (DeepCache:
the shallow branch; encoder propagation: the decoder), with the same embeddings and cross-attention inputs.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
from torch import nn

from fewstep.accel.base import AcceleratorHandle, find_network, unwrap_forward, wrap_forward
from fewstep.accel.keysteps import KeySteps
from fewstep.core.errors import UserError

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D")
RESIDUAL_INPUTS = ("down_block_additional_residuals", "mid_block_additional_residual",
                   "down_intrablock_additional_residuals")  # ControlNet / T2I-Adapter inputs of UNet2DConditionModel


def unet_of(target: Any, accelerator: str) -> nn.Module:
    """The diffusers U-Net inside target, checked to be one the caches can run in pieces."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    unet = find_network(target, (UNet2DModel, UNet2DConditionModel), accelerator)
    kinds = {type(b).__name__ for b in unet.down_blocks}
    ups = {type(b).__name__ for b in unet.up_blocks}
    if not kinds <= set(DOWN_BLOCKS) or not ups <= set(UP_BLOCKS):
        raise UserError(f"{accelerator} supports U-Nets of {', '.join(DOWN_BLOCKS)} and {', '.join(UP_BLOCKS)}; "
                        f"this one has {', '.join(sorted(kinds | ups))}")
    if unet.config.get("addition_embed_type") == "image_hint":
        raise UserError(f"{accelerator} does not support U-Nets with an image-hint input (addition_embed_type)")
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


def conditional_embedding(unet: nn.Module, a: dict) -> tuple[torch.Tensor, dict]:
    """UNet2DConditionModel.forward's steps 0-1: the embedding (time, class, added conditions such as SDXL's
    text_time) and the keyword inputs of its cross-attention blocks (masks turned into biases, as it does)."""
    if any(a[k] is not None for k in RESIDUAL_INPUTS):
        raise UserError("U-Net feature caches do not combine with ControlNet / T2I-Adapter residual inputs")
    sample = a["sample"]
    mask, encoder_mask = a["attention_mask"], a["encoder_attention_mask"]
    mask = None if mask is None else ((1 - mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    encoder_mask = None if encoder_mask is None else ((1 - encoder_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=a["timestep"]), a["timestep_cond"])
    class_emb = unet.get_class_embed(sample=sample, class_labels=a["class_labels"])
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=a["encoder_hidden_states"],
                                 added_cond_kwargs=a["added_cond_kwargs"])
    emb = emb + aug_emb if aug_emb is not None else emb
    emb = unet.time_embed_act(emb) if unet.time_embed_act is not None else emb
    states = unet.process_encoder_hidden_states(encoder_hidden_states=a["encoder_hidden_states"],
                                                added_cond_kwargs=a["added_cond_kwargs"])
    return emb, {"encoder_hidden_states": states, "attention_mask": mask,
                 "cross_attention_kwargs": a["cross_attention_kwargs"], "encoder_attention_mask": encoder_mask}


def attend(block: nn.Module, i: int, hidden: torch.Tensor, cross: dict) -> torch.Tensor:
    """Attention layer i of a block: self-attention (Attn*Block2D), or a Transformer2DModel with the text."""
    if getattr(block, "has_cross_attention", False):
        return block.attentions[i](hidden, **cross, return_dict=False)[0]
    return block.attentions[i](hidden)


def encode_layers(block: nn.Module, hidden: torch.Tensor, emb: torch.Tensor, cross: dict,
                  layers: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The first `layers` (resnet, attention) layers of a down block, without its downsampler, and their outputs."""
    states = ()
    for i in range(layers):
        hidden = block.resnets[i](hidden, emb)
        if hasattr(block, "attentions"):
            hidden = attend(block, i, hidden, cross)
        states += (hidden,)
    return hidden, states


def decode_layers(block: nn.Module, hidden: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor,
                  cross: dict, first: int, upsample_size: Any) -> torch.Tensor:
    """An up block from its layer `first` on: each layer takes a skip feature off the end, then the upsampler."""
    if getattr(block, "b1", None):
        raise UserError("U-Net feature caches do not combine with FreeU; disable_freeu() first")
    for i in range(first, len(block.resnets)):
        hidden, skips = torch.cat([hidden, skips[-1]], dim=1), skips[:-1]
        hidden = block.resnets[i](hidden, emb)
        if hasattr(block, "attentions"):
            hidden = attend(block, i, hidden, cross)
    for upsampler in block.upsamplers or []:
        resnet = getattr(block, "upsample_type", None) == "resnet"
        hidden = upsampler(hidden, temb=emb) if resnet else upsampler(hidden, upsample_size)
    return hidden


def decode(unet: nn.Module, hidden: torch.Tensor, res_samples: tuple[torch.Tensor, ...], emb: torch.Tensor,
           start: int, cross: dict | None = None, forward_upsample_size: bool = False, first: int = 0) -> torch.Tensor:
    """The U-Net's up path from up block `start` (its layer `first`): each block takes its skip features off the end."""
    cross = cross or {}
    for j in range(start, len(unet.up_blocks)):
        block = unet.up_blocks[j]
        k = len(block.resnets) - (first if j == start else 0)
        skips, res_samples = res_samples[-k:], res_samples[:-k]
        size = res_samples[-1].shape[2:] if forward_upsample_size and j < len(unet.up_blocks) - 1 else None
        if j == start and first:
            hidden = decode_layers(block, hidden, skips, emb, cross, first, size)
        elif getattr(block, "has_cross_attention", False):
            hidden = block(hidden_states=hidden, res_hidden_states_tuple=skips, temb=emb, upsample_size=size, **cross)
        else:
            hidden = block(hidden_states=hidden, res_hidden_states_tuple=skips, temb=emb, upsample_size=size)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


class UNetCacheHandle(AcceleratorHandle):
    """Wraps one U-Net instance's forward; `cached_forward` says what a cached call runs."""

    name = "unet cache"

    def __init__(self, unet: nn.Module, steps: KeySteps, captured: range):
        super().__init__()
        self.unet, self.steps = unet, steps
        self.conditional = hasattr(unet, "get_time_embed")  # a UNet2DConditionModel
        self.signature = inspect.signature(type(unet).forward)
        self.inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}  # up block -> (hidden, skips)
        self._capturing = False
        self._hooks = [unet.up_blocks[j].register_forward_pre_hook(partial(self._capture, j), with_kwargs=True)
                       for j in captured]
        wrap_forward(unet, self.forward, self.name)

    def _capture(self, j: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capturing:  # UNet2DModel passes the block inputs positionally, UNet2DConditionModel by keyword
            self.inputs[j] = (kwargs.get("hidden_states", args[0] if args else None),
                              kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(self.unet, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        call = self.begin_call(a["sample"], a["timestep"])
        if self.steps.is_full(call) or not self.inputs:
            self.full_calls += 1
            self._capturing = True
            try:
                return type(self.unet).forward(self.unet, *args, **kwargs)
            finally:
                self._capturing = False
        self.cached_calls += 1
        out = self.cached_output(a)
        return self.output_class(sample=out) if a["return_dict"] else (out,)

    @property
    def output_class(self) -> type:
        if self.conditional:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
            return UNet2DConditionOutput
        from diffusers.models.unets.unet_2d import UNet2DOutput
        return UNet2DOutput

    def cached_output(self, a: dict) -> torch.Tensor:
        """A cached call: the forward's own embedding and input steps, then `cached_forward`."""
        unet, sample = self.unet, a["sample"]
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        if not self.conditional:
            emb, timesteps = embedding(unet, sample, a["timestep"], a["class_labels"])
            out = self.cached_forward(sample, emb, {}, False)
            if unet.config.time_embedding_type == "fourier":
                out = out / timesteps.reshape(-1, *[1] * (out.ndim - 1))
            return out
        emb, cross = conditional_embedding(unet, {**a, "sample": sample})
        upsample = any(n % 2**unet.num_upsamplers for n in sample.shape[-2:])
        return self.cached_forward(sample, emb, cross, upsample)

    def cached_forward(self, sample: torch.Tensor, emb: torch.Tensor, cross: dict,
                       forward_upsample_size: bool) -> torch.Tensor:
        """The network output of a cached call, from the input, the embedding, cross-attention inputs and self.inputs."""
        raise NotImplementedError

    def clear(self) -> None:
        self.inputs = {}

    def detach(self) -> None:
        unwrap_forward(self.unet)
        for hook in self._hooks:
            hook.remove()
