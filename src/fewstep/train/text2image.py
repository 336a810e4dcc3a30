"""Train a latent text-to-image teacher on captioned images, in resumable stages inside one run folder, and export
it as a StableDiffusionPipeline folder that plain diffusers loads and runs.

Stages (each a run of the shared loop in its own sub-folder; a finished stage is exported there and skipped on
resume, an unfinished one resumes from its last checkpoint):
  1. autoencoder/ : a small AutoencoderKL (train/autoencoder.py), with its test reconstruction error;
  2. text_encoder/: a CLIP tokenizer written from the captions' words and a randomly initialised CLIPTextModel;
  3. unet/        : a UNet2DConditionModel on the scaled latents with SD's VP objective and prompt dropout
                    (train/vp.py); with --text-encoder trained the encoder is trained jointly by the same loss
                    (the encoder learns what the U-Net's cross-attention reads; no second objective or stage).
Then model/ is the pipeline folder (safetensors, a DDIMScheduler on SD's schedule) with fewstep.json recording the
data spec, the default sampler and CFG scale, and each stage's seconds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fewstep.config import TrainConfig, to_toml
from fewstep.core.errors import UserError
from fewstep.data import Dataset
from fewstep.data.batches import TensorSource
from fewstep.models.info import FEWSTEP_JSON
from fewstep.train.autoencoder import AutoencoderTraining, build_vae, encode_latents, finish_autoencoder
from fewstep.train.loop import make_accelerator, run_loop
from fewstep.train.vp import PREDICTIONS, TextToImageNetwork, VPTextTraining

TEXT_ENCODERS = ("trained", "frozen")
MAX_TOKENS = 16  # the captions' longest is 10 words + BOS + EOS
# CLIPTextModel and UNet2DConditionModel sizes per preset (the tiny ones are diffusers' test sizes)
CLIP_PRESETS = {"tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
                "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
                "base": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8)}
UNET_PRESETS = {"tiny": dict(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=4, norm_num_groups=4),
                "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=8,
                              norm_num_groups=16),
                "base": dict(block_out_channels=(64, 128, 256), layers_per_block=2, attention_head_dim=8,
                             norm_num_groups=32)}
# the recorded defaults: a converged sampler and CFG scale (docs/BENCHMARKS.md, "captions teacher")
DEFAULT_SAMPLER = {"name": "dpmpp_2m", "schedule": "karras", "steps": 15}
DEFAULT_CFG_SCALE = 3.0


def check_text_config(cfg: TrainConfig) -> None:
    """One-line errors for settings the text-to-image teacher does not take."""
    if cfg.text_encoder not in TEXT_ENCODERS:
        raise UserError(f"unknown --text-encoder {cfg.text_encoder!r}; choose {' or '.join(TEXT_ENCODERS)}")
    if cfg.prediction_type not in PREDICTIONS:
        raise UserError(f"unknown --prediction-type {cfg.prediction_type!r}; choose {' or '.join(PREDICTIONS)}")
    if cfg.objective != "edm":
        raise UserError(f"the captions text-to-image teacher trains with Stable Diffusion's VP objective "
                        f"(--prediction-type epsilon | v_prediction), not --objective {cfg.objective}")
    if cfg.preset not in UNET_PRESETS:
        raise UserError(f"unknown preset {cfg.preset!r}; choose {', '.join(UNET_PRESETS)}")


def _stage(name: str, number: int) -> None:
    print(f"stage {number}/3: {name}", file=sys.stderr)


def text_encoder_stage(cfg: TrainConfig, data: Dataset, folder: Path):
    """The tokenizer written from the training captions' words and a seeded random CLIPTextModel (saved in folder)."""
    from transformers import CLIPTextModel

    from fewstep.models.tiny import build_clip_tokenizer, tiny_clip_config

    words = sorted({w for caption in data.train_text for w in caption.lower().split()})
    tokenizer = build_clip_tokenizer(words, folder / "tokenizer", model_max_length=MAX_TOKENS)
    if (folder / "model.safetensors").exists():
        return tokenizer, CLIPTextModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    config = tiny_clip_config(tokenizer)
    for key, value in CLIP_PRESETS[cfg.preset].items():
        setattr(config, key, value)
    config.projection_dim = config.hidden_size
    torch.manual_seed(cfg.seed + 1)
    encoder = CLIPTextModel(config)
    encoder.save_pretrained(folder, safe_serialization=True)
    return tokenizer, encoder


def build_unet(preset: str, latent_shape: tuple[int, ...], cross_attention_dim: int):
    """A fresh UNet2DConditionModel of the preset's size, with cross-attention at every level below the latents' full
    resolution (self-attention over every latent pixel costs most of a CPU step and the layout needs no finer map)."""
    from diffusers import UNet2DConditionModel

    size = UNET_PRESETS[preset]
    levels = len(size["block_out_channels"])
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (levels - 1)
    up = ["CrossAttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"]
    return UNet2DConditionModel(sample_size=latent_shape[-1], in_channels=latent_shape[0],
                                out_channels=latent_shape[0], down_block_types=down, up_block_types=up,
                                cross_attention_dim=cross_attention_dim,
                                **{k: list(v) if isinstance(v, tuple) else v for k, v in size.items()})


def noise_scheduler(prediction_type: str):
    """The DDIMScheduler on Stable Diffusion's noise schedule (scaled_linear 0.00085..0.012, 1000 steps)."""
    from fewstep.models.tiny import tiny_scheduler

    return tiny_scheduler("DDIMScheduler", prediction_type)


def _remaining(stop_at: int | None, done: int) -> int | None:
    return None if stop_at is None else max(stop_at - done, 0)


def _seconds(run_dir: Path) -> float:
    from fewstep.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir / "checkpoints")
    return round(json.loads((found / "state.json").read_text())["train_seconds"], 1) if found else 0.0


def train_text_to_image(cfg: TrainConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
                        data: Dataset | None = None) -> Path:
    """Train all three stages into run directory `out` and export model/; returns the pipeline folder.

    `stop_at` counts steps over the stages (vae_steps, then steps): the run stops there as if killed.
    """
    from fewstep.train.teacher import load_training_data

    check_text_config(cfg)
    run_dir = Path(out)
    if (run_dir / "config.toml").exists() and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    data = data if data is not None else load_training_data(cfg)
    if data.train_text is None:
        raise UserError(f"{data.name} has no captions; a text-to-image teacher trains on captioned images")
    acc = make_accelerator(cfg.device, cfg.mixed_precision)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))

    vae_dir = run_dir / "autoencoder"
    if not (vae_dir / "model" / "reconstruction.json").exists():
        _stage("autoencoder", 1)
        torch.manual_seed(cfg.seed)
        vae = build_vae(cfg.preset, data.shape[-1])
        latent_shape = (vae.config.latent_channels, *[n // 2 ** (len(vae.config.block_out_channels) - 1)
                                                      for n in data.shape[1:]])
        loop = replace(cfg.loop(), steps=cfg.vae_steps, sample_every=0)
        trained = run_loop(AutoencoderTraining(vae, latent_shape), TensorSource(data.train, seed=cfg.seed), loop,
                           vae_dir, accelerator=acc, stop_at=stop_at)
        if stop_at is not None and stop_at < cfg.vae_steps:
            return run_dir / "model"
        report = finish_autoencoder(trained["vae"].vae, data.train, data.test, vae_dir / "model")
        print(f"autoencoder: test MSE {report['test']['mse']:.5f}, PSNR {report['test']['psnr']:.2f} dB",
              file=sys.stderr)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir / "model", local_files_only=True, use_safetensors=True).eval()

    _stage("text encoder", 2)
    tokenizer, text_encoder = text_encoder_stage(cfg, data, run_dir / "text_encoder")

    unet_dir = run_dir / "unet"
    latents_file = unet_dir / "latents.safetensors"
    from safetensors.torch import load_file, save_file

    if not latents_file.exists():  # encoded once: the U-Net stage (and its resumption) reads the same latents
        unet_dir.mkdir(parents=True, exist_ok=True)
        save_file({"latents": encode_latents(vae, data.train, vae.config.scaling_factor).contiguous()},
                  str(latents_file))
    latents = load_file(latents_file)["latents"]
    _stage("text-conditioned U-Net", 3)
    torch.manual_seed(cfg.seed)
    network = TextToImageNetwork(build_unet(cfg.preset, tuple(latents.shape[1:]), text_encoder.config.hidden_size),
                                 text_encoder, tokenizer, cfg.text_encoder == "trained")
    scheduler = noise_scheduler(cfg.prediction_type)
    method = VPTextTraining(network, scheduler.alphas_cumprod, cfg.prediction_type, cfg.label_dropout)
    source = TensorSource(latents, seed=cfg.seed, text=data.train_text)
    trained = run_loop(method, source, cfg.loop(), unet_dir, accelerator=acc,
                       stop_at=_remaining(stop_at, cfg.vae_steps))
    if stop_at is not None and stop_at < cfg.vae_steps + cfg.steps:
        return run_dir / "model"
    return export_pipeline(trained["model"], vae, scheduler, run_dir, cfg, data)


def export_pipeline(network: TextToImageNetwork, vae, scheduler, run_dir: Path, cfg: TrainConfig,
                    data: Dataset) -> Path:
    """Save model/: a StableDiffusionPipeline folder (safetensors) plus fewstep.json with the run's record."""
    from diffusers import StableDiffusionPipeline

    from fewstep import __version__
    from fewstep.models.pipeline_folder import load_pipeline_folder

    folder = run_dir / "model"
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=network.text_encoder, tokenizer=network.tokenizer,
                                   unet=network.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    info = load_pipeline_folder(folder).info
    spec = data.spec
    reconstruction = json.loads((run_dir / "autoencoder" / "model" / "reconstruction.json").read_text())
    seconds = {"autoencoder": _seconds(run_dir / "autoencoder"), "unet": _seconds(run_dir / "unet")}
    info = replace(info, dataset=str(spec) if spec else cfg.dataset, data=spec.record() if spec else None,
                   sampler=dict(DEFAULT_SAMPLER),
                   acceleration={"cache": None, "guidance": None, "cfg_scale": DEFAULT_CFG_SCALE,
                                 "cfg_interval": None},
                   extra={**info.extra, "preset": cfg.preset, "text_encoder": cfg.text_encoder,
                          "train_steps": {"autoencoder": cfg.vae_steps, "unet": cfg.steps},
                          "train_seconds": seconds, "reconstruction": reconstruction})
    (folder / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    return folder
