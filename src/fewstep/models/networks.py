"""Network presets (U-Net, DiT, MLP) built from diffusers, and the call that feeds each one EDM's inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewstep.core.errors import UserError

PRESETS = ("tiny", "small", "base")

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16, attention_head_dim=32,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "base": dict(block_out_channels=(128, 256, 256), layers_per_block=2, norm_num_groups=32, attention_head_dim=64,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2),
    "small": dict(num_attention_heads=4, attention_head_dim=32, num_layers=6),
    "base": dict(num_attention_heads=6, attention_head_dim=64, num_layers=12),
}
MLP_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, num_blocks=2, emb_dim=32),
    "small": dict(hidden=256, num_blocks=4, emb_dim=64),
    "base": dict(hidden=512, num_blocks=6, emb_dim=128),
}
ARCHS = ("unet", "dit", "mlp")


def build_network(arch: str, preset: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised network of `arch` and size `preset` for items of `shape`."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if arch == "mlp":
        if len(shape) != 1:
            raise UserError(f"arch 'mlp' is for vector data; this dataset has items of shape {shape}; use unet or dit")
        from fewstep.models.mlp import ResidualMLP
        return ResidualMLP(dim=shape[0], num_classes=num_classes, **MLP_PRESETS[preset])
    if len(shape) != 3:
        raise UserError(f"arch {arch!r} is for images; this dataset has items of shape {shape}; use mlp")
    channels, size = shape[0], shape[-1]
    if arch == "unet":
        from diffusers import UNet2DModel
        return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                           num_class_embeds=num_classes + 1 if num_classes else None, **UNET_PRESETS[preset])
    if arch == "dit":
        from diffusers import DiTTransformer2DModel
        patch = 2 if size % 2 == 0 else 1
        net = DiTTransformer2DModel(in_channels=channels, out_channels=channels, sample_size=size, patch_size=patch,
                                    num_embeds_ada_norm=max(num_classes, 1), **DIT_PRESETS[preset])
        disable_label_dropout(net)
        return net
    raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def disable_label_dropout(net: nn.Module) -> None:
    """diffusers' DiT drops labels with its own global RNG in train mode; fewstep drops them itself, seeded."""
    from diffusers.models.embeddings import LabelEmbedding

    for m in net.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0


def arch_of(net: nn.Module) -> str:
    """The fewstep arch name of a network instance."""
    name = type(net).__name__
    return {"UNet2DModel": "unet", "DiTTransformer2DModel": "dit", "ResidualMLP": "mlp"}.get(name, name)


def call_network(net: nn.Module, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Feed preconditioned inputs to any supported backbone and return its raw output F."""
    arch = arch_of(net)
    if arch == "unet":
        return net(x, c_noise, class_labels=labels).sample
    if arch == "dit":
        if labels is None:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return net(x, timestep=c_noise, class_labels=labels).sample
    return net(x, c_noise, labels)
