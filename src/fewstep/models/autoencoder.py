"""A latent model's autoencoder: latents <-> images in [-1, 1], with the VAE's scaling (and shift or mean/std)."""

from __future__ import annotations

import torch
from torch import nn


class LatentAutoencoder(nn.Module):
    """Decoding is one explicit step after sampling; encoding maps images to the latents the model was trained on.

    Latents are z * scaling_factor (Stable Diffusion), (z - shift_factor) * scaling_factor when the VAE has a shift,
    or (z - latents_mean) * scaling_factor / latents_std when its config lists them (as SDXL's pipeline reads them).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        shift = getattr(cfg, "shift_factor", None)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        channels = cfg.latent_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
                             if mean is not None and std is not None else torch.full((1, 1, 1, 1), float(shift or 0)),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
                             if mean is not None and std is not None else torch.ones(1, 1, 1, 1), persistent=False)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (clamped, as the pipelines' postprocessing clamps them) from latents."""
        z = latents.to(self.vae.dtype) * self.std / self.scaling_factor + self.mean
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1]: the mean of the VAE's posterior, scaled (deterministic)."""
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((z - self.mean) * self.scaling_factor / self.std).float()
