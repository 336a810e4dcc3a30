"""A residual MLP for vector data, saved and loaded like any diffusers model."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def fourier_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a [batch] float tensor (Vaswani et al.), cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None] * 100.0  # c_noise = ln(sigma)/4 spans ~[-2, 2]: spread it out
    return torch.cat([args.cos(), args.sin()], 1)


class ResidualBlock(nn.Module):
    """LayerNorm -> Linear -> SiLU -> Linear, plus a scale/shift from the conditioning embedding."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden * 2)
        self.fc2 = nn.Linear(hidden * 2, hidden)
        self.emb = nn.Linear(emb_dim, hidden * 2)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.emb(emb).chunk(2, dim=1)
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))


class ResidualMLP(ModelMixin, ConfigMixin):
    """F(x, c_noise, labels) for [batch, dim] data; class label `num_classes` is the null (unconditional) label."""

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 128, num_blocks: int = 3, emb_dim: int = 64, num_classes: int = 0):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(fourier_embedding(c_noise, self.config.emb_dim))
        if self.label is not None and class_labels is not None:
            emb = emb + self.label(class_labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
