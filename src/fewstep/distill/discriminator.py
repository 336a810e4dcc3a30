"""A latent discriminator (LADD, Sauer et al. 2024): small trainable heads on a diffusion network's own features.

The backbone is any fewstep denoiser (U-Net, DiT, MLP, a diffusers VP U-Net): its features at a noise level are
read with forward hooks on a few layers, and the forward pass stops after the last of them. The backbone is not
part of the discriminator's parameters: ADD/LADD pass the frozen teacher, DMD2 its trainable fake score network.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.cond import CondLike
from fewstep.core.denoiser import Cond, backbone


class _Stop(Exception):
    """Raised by the last feature hook: the rest of the network is not needed."""


def feature_layers(net: nn.Module) -> list[nn.Module]:
    """The layers whose outputs the heads read: a U-Net's down path and middle, every other DiT block, MLP blocks."""
    if hasattr(net, "mid_block") and hasattr(net, "down_blocks"):
        return [*net.down_blocks, net.mid_block]
    if hasattr(net, "transformer_blocks"):
        blocks = list(net.transformer_blocks)
        return blocks[1::2] or blocks
    if hasattr(net, "blocks"):
        return list(net.blocks)
    raise ValueError(f"no known feature layers in {type(net).__name__}")


@contextlib.contextmanager
def _capture(layers: list[nn.Module], stop: bool = True) -> Iterator[list[torch.Tensor]]:
    found: list[torch.Tensor] = []

    def hook(module: nn.Module, args: object, output: object) -> None:
        found.append(output[0] if isinstance(output, tuple) else output)
        if stop and len(found) == len(layers):
            raise _Stop

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def backbone_features(denoiser: nn.Module, layers: list[nn.Module], x: torch.Tensor, sigma: torch.Tensor,
                      labels: Cond) -> list[torch.Tensor]:
    """The outputs of `layers` when `denoiser` sees x at noise level sigma (the rest of the network is skipped)."""
    with _capture(layers) as found:
        try:
            denoiser(x, sigma, labels)
        except _Stop:
            pass
    return list(found)


def denoise_with_features(denoiser: nn.Module, layers: list[nn.Module], x: torch.Tensor, sigma: torch.Tensor,
                          labels: Cond) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The denoiser's output and the outputs of `layers`, from one whole forward pass."""
    with _capture(layers, stop=False) as found:
        out = denoiser(x, sigma, labels)
    return out, list(found)


class Head(nn.Module):
    """Features [B, C, H, W], [B, N, C] or [B, C] -> one logit per row; a class projection term when conditional."""

    def __init__(self, channels: int, spatial: str, num_classes: int, width: int = 64):
        super().__init__()
        self.spatial = spatial
        if spatial == "map":
            self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(min(8, width), width),
                                      nn.SiLU())
        else:
            self.body = nn.Sequential(nn.Linear(channels, width), nn.LayerNorm(width), nn.SiLU())
        self.out = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes + 1, width) if num_classes else None

    def forward(self, f: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        h = self.body(f.float())
        if self.spatial == "map":
            h = h.permute(0, 2, 3, 1).flatten(1, 2)  # [B, HW, width]
        elif h.ndim == 2:
            h = h[:, None]
        logit = self.out(h).mean((1, 2))  # a logit per location (token), averaged
        if self.embed is not None and labels is not None:
            logit = logit + (self.embed(labels) * h.mean(1)).sum(1) / h.shape[-1] ** 0.5
        return logit


class Discriminator(nn.Module):
    """Heads on the features of `denoiser`'s backbone; `paired` heads also read the features of a second (start) point.

    `forward` takes the denoiser to read (the same backbone, e.g. the frozen teacher or DMD2's fake score network).
    `example` is a condition of two rows the probe of the feature sizes passes (a text teacher's prompts).
    """

    def __init__(self, denoiser: nn.Module, shape: tuple[int, ...], num_classes: int, paired: bool = False,
                 width: int = 64, example: CondLike = None):
        super().__init__()
        self.paired = paired
        self._layers = feature_layers(backbone(denoiser))  # a plain list: the backbone is not a submodule
        device = next(denoiser.parameters()).device
        x = torch.zeros(2, *shape, device=device)
        labels = torch.zeros(2, dtype=torch.long, device=device) if num_classes else example
        with torch.no_grad():
            feats = backbone_features(denoiser, self._layers, x, torch.ones(2, device=device), labels)
        self.heads = nn.ModuleList(
            Head(f.shape[1 if f.ndim == 4 else -1] * (2 if paired else 1), "map" if f.ndim == 4 else "tokens",
                 num_classes, width) for f in feats)

    def forward(self, denoiser: nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None,
                start: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B] for x at sigma (summed over heads); `start` = (x_start, sigma_start) for paired heads."""
        feats = backbone_features(denoiser, self._layers, x, sigma, labels)
        if self.paired:
            with torch.no_grad():
                first = backbone_features(denoiser, self._layers, start[0], start[1], labels)
            feats = [torch.cat([f, g], dim=1 if f.ndim == 4 else -1) for f, g in zip(feats, first)]
        return self.judge(feats, labels)

    def judge(self, feats: list[torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """Logits [B] from the features of the layers the heads read (summed over heads)."""
        return sum(head(f, labels) for head, f in zip(self.heads, feats))

    def denoise_and_judge(self, denoiser: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                          labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's output and the logits, from one forward pass of `denoiser` (unpaired heads)."""
        out, feats = denoise_with_features(denoiser, self._layers, x, sigma, labels)
        return out, self.judge(feats, labels)


def hinge_losses(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: E relu(1 - D(real)) + E relu(1 + D(fake))."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def approx_r1(disc: Discriminator, denoiser: nn.Module, real: torch.Tensor, sigma: torch.Tensor,
              labels: torch.Tensor | None, logits: torch.Tensor, noise: torch.Tensor, eps: float = 0.01,
              **kw) -> torch.Tensor:
    """R1 without double backprop (approximate R1): E ||D(x + eps n) - D(x)||^2 / eps^2 ~ E ||grad_x D||^2."""
    return ((disc(denoiser, real + eps * noise, sigma, labels, **kw) - logits) ** 2).mean() / eps**2
