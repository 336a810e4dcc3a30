"""The autoencoder stage of a latent teacher: a small diffusers AutoencoderKL trained on the images, its latent
scaling factor and its reconstruction error on the test split.

Loss: mean squared reconstruction error of a posterior sample plus a small KL term (Rombach et al. 2022 regularise
the latent with a KL weight of 1e-6 on summed errors; per element here, so the weight reads differently). The
scaling factor makes the latents unit-std, as Stable Diffusion's 0.18215 does for its VAE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from fewstep.data.batches import Batch

# AutoencoderKL sizes per preset: each level after the first halves the side (two levels: 32x32 -> 16x16 latents)
# (the mid-block's self-attention is left out below base: on CPU it costs more than the convolutions)
VAE_PRESETS = {"tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                            mid_block_add_attention=False),
               "small": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                             mid_block_add_attention=False),
               "base": dict(block_out_channels=(64, 128), layers_per_block=2, norm_num_groups=32)}
KL_WEIGHT = 1e-4
SCALE_N, TEST_N, CHUNK = 2048, 1000, 256


def build_vae(preset: str, resolution: int, latent_channels: int = 4) -> nn.Module:
    """A fresh AutoencoderKL of the preset's size for RGB images of side `resolution`."""
    from diffusers import AutoencoderKL

    size = VAE_PRESETS[preset]
    levels = len(size["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=resolution,
                         down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                         **{k: list(v) if isinstance(v, tuple) else v for k, v in size.items()})


class ReconstructionLoss(nn.Module):
    """The VAE's training loss in its forward, so a DDP-wrapped copy all-reduces every gradient."""

    def __init__(self, vae: nn.Module, kl_weight: float = KL_WEIGHT):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.mean + posterior.std * noise).sample
        kl = posterior.kl() / posterior.mean[0].numel()
        return ((reconstruction - x) ** 2).mean() + self.kl_weight * kl.mean()


class AutoencoderTraining:
    """Reconstruction MSE of a posterior sample (reparameterised with the batch's noise) + KL_WEIGHT * KL per element."""

    def __init__(self, vae: nn.Module, latent_shape: tuple[int, ...], kl_weight: float = KL_WEIGHT):
        self.modules = {"vae": ReconstructionLoss(vae, kl_weight)}
        self.ema_modules = ("vae",)
        self.latent_shape = latent_shape

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"vae": self.modules["vae"](batch.x, batch.randn(*self.latent_shape))}


@torch.no_grad()
def encode_latents(vae: nn.Module, images: torch.Tensor, scaling_factor: float = 1.0) -> torch.Tensor:
    """Posterior means of images in [-1, 1] times scaling_factor, in fixed chunks (deterministic)."""
    return torch.cat([vae.encode(images[i:i + CHUNK]).latent_dist.mode() for i in range(0, len(images), CHUNK)]
                     ) * scaling_factor


@torch.no_grad()
def reconstruction_error(vae: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """MSE (images in [-1, 1]) and PSNR (dB, on [0, 1]) of decode(encode(x)) with the posterior mean, clamped."""
    out = torch.cat([vae.decode(vae.encode(images[i:i + CHUNK]).latent_dist.mode()).sample.clamp(-1, 1)
                     for i in range(0, len(images), CHUNK)])
    mse = float(((out - images) ** 2).mean())
    return {"mse": round(mse, 6), "psnr": round(10 * math.log10(4 / max(mse, 1e-12)), 2), "n": len(images)}


def finish_autoencoder(vae: nn.Module, train: torch.Tensor, test: torch.Tensor, folder: Path) -> dict:
    """Set the scaling factor (1 / std of the training latents), save the VAE to folder, return its test error."""
    vae = vae.eval().requires_grad_(False)
    std = float(encode_latents(vae, train[:SCALE_N]).std())
    vae.register_to_config(scaling_factor=round(1 / std, 5))
    report = {"scaling_factor": vae.config.scaling_factor, "test": reconstruction_error(vae, test[:TEST_N])}
    vae.save_pretrained(folder, safe_serialization=True)
    (folder / "reconstruction.json").write_text(json.dumps(report, indent=2))
    return report
