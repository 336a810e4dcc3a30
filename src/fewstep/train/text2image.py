"""Train a latent text-to-image teacher on captioned images, in resumable stages inside one run folder, and export
it as a StableDiffusionPipeline folder that plain diffusers loads and runs.

Stages (each a run of the shared loop in its own sub-folder; a finished stage is exported there and skipped on
resume, an unfinished one resumes from its last checkpoint):
  1. autoencoder/ : a small AutoencoderKL (train/autoencoder.py), with its test reconstruction error;
  2. text_encoder/: a CLIP tokenizer written from the captions' words and a randomly initialised CLIPTextModel
                    (--objective flow: two CLIPTextModelWithProjection, in 1/ and 2/, as SD3 has);
  3. unet/        : a UNet2DConditionModel on the scaled latents with SD's VP objective and prompt dropout
                    (train/vp.py); with --objective flow an SD3Transformer2DModel with flow matching instead
                    (train/sd3.py, train/flow.py). With --text-encoder trained the encoders are trained jointly by
                    the same loss (they learn what the network's attention reads; no second objective or stage).
Then model/ is the pipeline folder (safetensors) with fewstep.json recording the data spec, the default sampler and
CFG scale, and each stage's seconds: a StableDiffusionPipeline with a DDIMScheduler on SD's schedule, or (flow) a
StableDiffusion3Pipeline with a FlowMatchEulerDiscreteScheduler and no T5 encoder, whose T5 place holds
T5_TOKENS zero tokens (recorded as max_sequence_length: diffusers is called with max_sequence_length=16).
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
from fewstep.train.flow import FlowTextTraining
from fewstep.train.sd3 import SD3TextNetwork, build_sd3_transformer
from fewstep.train.vp import PREDICTIONS, TextToImageNetwork, VPTextTraining

TEXT_ENCODERS = ("auto", "trained", "frozen")
AUTO_TEXT_ENCODER = {"edm": "frozen", "flow": "trained"}  # measured per objective: docs/BENCHMARKS.md §13
MIN_TOKENS, MAX_TOKENS = 16, 77  # the encoder reads the longest training caption, in [16, 77] tokens (SD's 77)
T5_TOKENS = 16  # the flow teacher's zero tokens in T5's place (the pipeline's default 256 costs ~4x a CPU step)
OBJECTIVES = {"edm": "a U-Net with SD's VP objective, saved as a StableDiffusionPipeline",
              "flow": "an SD3 transformer with flow matching, saved as a StableDiffusion3Pipeline"}
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
DEFAULT_FLOW_SAMPLER = {"name": "euler", "schedule": "scheduler", "steps": 20}
DEFAULT_CFG_SCALE = 3.0
PREVIEW_N = 64  # seen test captions drawn and scored at each preview of the U-Net stage


def check_text_config(cfg: TrainConfig) -> None:
    """One-line errors for settings the text-to-image teacher does not take."""
    if cfg.text_encoder not in TEXT_ENCODERS:
        raise UserError(f"unknown --text-encoder {cfg.text_encoder!r}; choose {' or '.join(TEXT_ENCODERS)}")
    if cfg.prediction_type not in PREDICTIONS:
        raise UserError(f"unknown --prediction-type {cfg.prediction_type!r}; choose {' or '.join(PREDICTIONS)}")
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"the captions text-to-image teacher trains --objective "
                        f"{' or '.join(f'{k} ({v})' for k, v in OBJECTIVES.items())}, not {cfg.objective!r}")
    if cfg.preset not in UNET_PRESETS:
        raise UserError(f"unknown preset {cfg.preset!r}; choose {', '.join(UNET_PRESETS)}")


def _stage(name: str, number: int) -> None:
    print(f"stage {number}/3: {name}", file=sys.stderr)


def text_encoder_stage(cfg: TrainConfig, data: Dataset, folder: Path):
    """The tokenizer written from the training captions' words and seeded random CLIP encoders (saved in folder):
    one CLIPTextModel, or (flow) two CLIPTextModelWithProjection in folder/1 and folder/2."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from fewstep.models.tiny import build_clip_tokenizer, tiny_clip_config

    words = sorted({w for caption in data.train_text for w in caption.lower().split()})
    tokenizer = build_clip_tokenizer(words, folder / "tokenizer", model_max_length=MAX_TOKENS)
    longest = max(len(ids) for ids in tokenizer(list(data.train_text)).input_ids)
    if longest > MAX_TOKENS:
        print(f"note: the longest training caption has {longest} tokens; the text encoder reads the first "
              f"{MAX_TOKENS}, as Stable Diffusion's does", file=sys.stderr)
    tokenizer.model_max_length = min(max(longest, MIN_TOKENS), MAX_TOKENS)
    tokenizer.save_pretrained(folder / "tokenizer")
    flow = cfg.objective == "flow"
    cls = CLIPTextModelWithProjection if flow else CLIPTextModel
    encoders = []
    for i, path in enumerate([folder / "1", folder / "2"] if flow else [folder]):
        if (path / "model.safetensors").exists():
            encoders.append(cls.from_pretrained(path, local_files_only=True, use_safetensors=True))
            continue
        config = tiny_clip_config(tokenizer)
        for key, value in CLIP_PRESETS[cfg.preset].items():
            setattr(config, key, value)
        config.projection_dim = config.hidden_size
        torch.manual_seed(cfg.seed + 1 + i)
        encoders.append(cls(config))
        encoders[-1].save_pretrained(path, safe_serialization=True)
    return tokenizer, encoders


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


def noise_scheduler(cfg: TrainConfig):
    """The DDIMScheduler on Stable Diffusion's noise schedule (scaled_linear 0.00085..0.012, 1000 steps), or (flow) a
    FlowMatchEulerDiscreteScheduler with the run's --flow-shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fewstep.models.tiny import tiny_scheduler

    if cfg.objective == "flow":
        return FlowMatchEulerDiscreteScheduler(shift=cfg.flow_shift)
    return tiny_scheduler("DDIMScheduler", cfg.prediction_type)


def text_denoiser(network: TextToImageNetwork | SD3TextNetwork, scheduler, prediction_type: str):
    """The network as the denoiser its exported pipeline gives: VP on the scheduler's alphas, or an SD3 flow."""
    from fewstep.models.diffusers_adapter import DiffusersVPDenoiser
    from fewstep.models.flow import FlowMatchDenoiser, read_flow_scheduler
    from fewstep.models.transformers import sd3_call

    if isinstance(network, SD3TextNetwork):
        config = {"_class_name": type(scheduler).__name__, **scheduler.config}
        return FlowMatchDenoiser(network.transformer, sd3_call, read_flow_scheduler(config), text_conditioned=True)
    return DiffusersVPDenoiser(network.unet, scheduler.alphas_cumprod, prediction_type)


def text_preview(network: TextToImageNetwork | SD3TextNetwork, vae, scheduler, prediction_type: str,
                 captions: list[str], path: Path) -> torch.Tensor:
    """Draw one image per caption with the recorded sampler and CFG scale (fixed seed), save them as a grid labelled
    by caption at path and return them (decoded, in [-1, 1])."""
    from fewstep.core.cond import Cond
    from fewstep.core.schedules import make_schedule
    from fewstep.data.visualize import save_prompt_grid
    from fewstep.models.autoencoder import LatentAutoencoder
    from fewstep.samplers import generate
    from fewstep.samplers.cfg import CFGDenoiser
    from fewstep.train.teacher import GRID_SEED

    net = network.transformer if isinstance(network, SD3TextNetwork) else network.unet
    sampler = DEFAULT_FLOW_SAMPLER if isinstance(network, SD3TextNetwork) else DEFAULT_SAMPLER
    with torch.no_grad():
        text = network.cond(captions)
        cond = Cond(text=text.text, pooled=text.pooled, negative=network.cond([""] * len(captions)))
        inner = text_denoiser(network, scheduler, prediction_type).to(net.device).eval()
        sigmas = make_schedule(sampler["schedule"], sampler["steps"], inner.sigma_range)
        shape = [net.config.in_channels, *[net.config.sample_size] * 2]
        out = generate(CFGDenoiser(inner, DEFAULT_CFG_SCALE), shape, len(captions), sigmas, sampler["name"],
                       GRID_SEED, cond, device=net.device)
        images = LatentAutoencoder(vae).decode(out.samples.to(vae.device)).cpu()
    save_prompt_grid(images, captions, path)
    return images


def preview_row(step: int, quality: dict) -> dict:
    """The learning-curve line of one preview: its step, accuracies and FD (rounded; intervals left out)."""
    return {"step": step, **{k: round(v, 4) for k, v in quality.items() if k.endswith("_accuracy") or k == "fd"}}


def preview_callback(vae, scheduler, cfg: TrainConfig, data: Dataset, folder: Path):
    """The U-Net stage's preview: a grid of PREVIEW_N captions in folder/step-N.png; on the captions task also their
    prompt and per-attribute accuracy (the captions ruler), printed and appended to folder/quality.jsonl."""
    from fewstep.data.captions import caption_prompts
    from fewstep.metrics import captions as ruler

    task = data.name.startswith("captions")
    captions = caption_prompts("seen", PREVIEW_N).captions if task else list(data.train_text[:PREVIEW_N])

    def on_sample(step: int, modules: dict) -> None:
        images = text_preview(modules["model"], vae, scheduler, cfg.prediction_type, captions,
                              folder / f"step-{step:07d}.png")
        if not task:
            return
        row = ruler.caption_quality(images, captions, "seen", config=ruler.RULER_CONFIG)
        print(f"preview at step {step}: prompt accuracy {row['prompt_accuracy']:.3f} on {len(captions)} seen "
              f"captions (real renders: {row['prompt_accuracy_floor']:.3f})", file=sys.stderr)
        with open(folder / "quality.jsonl", "a") as f:
            f.write(json.dumps(preview_row(step, row)) + "\n")

    return on_sample


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
    if cfg.text_encoder == "auto":
        cfg = replace(cfg, text_encoder=AUTO_TEXT_ENCODER[cfg.objective])
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
        # the autoencoder keeps a constant rate (--lr-decay is the U-Net's; the reconstruction is at 40 dB without it)
        loop = replace(cfg.loop(), steps=cfg.vae_steps, sample_every=0, lr_decay="none")
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
    tokenizer, encoders = text_encoder_stage(cfg, data, run_dir / "text_encoder")

    unet_dir = run_dir / "unet"
    latents_file = unet_dir / "latents.safetensors"
    from safetensors.torch import load_file, save_file

    if not latents_file.exists():  # encoded once: the U-Net stage (and its resumption) reads the same latents
        unet_dir.mkdir(parents=True, exist_ok=True)
        save_file({"latents": encode_latents(vae, data.train, vae.config.scaling_factor).contiguous()},
                  str(latents_file))
    latents = load_file(latents_file)["latents"]
    flow = cfg.objective == "flow"
    _stage("text-conditioned " + ("SD3 transformer" if flow else "U-Net"), 3)
    torch.manual_seed(cfg.seed)
    trained = cfg.text_encoder == "trained"
    hidden, shape = encoders[0].config.hidden_size, tuple(latents.shape[1:])
    scheduler = noise_scheduler(cfg)
    if flow:
        transformer = build_sd3_transformer(cfg.preset, shape, hidden, encoders[0].config.projection_dim)
        network = SD3TextNetwork(transformer, encoders, tokenizer, trained, T5_TOKENS)
        method = FlowTextTraining(network, cfg.time_sampling, cfg.label_dropout)
    else:
        network = TextToImageNetwork(build_unet(cfg.preset, shape, hidden), encoders[0], tokenizer, trained)
        method = VPTextTraining(network, scheduler.alphas_cumprod, cfg.prediction_type, cfg.label_dropout)
    source = TensorSource(latents, seed=cfg.seed, text=data.train_text)
    on_sample = preview_callback(vae, scheduler, cfg, data, unet_dir / "samples")
    trained = run_loop(method, source, cfg.loop(), unet_dir, on_sample, accelerator=acc,
                       stop_at=_remaining(stop_at, cfg.vae_steps), desc="train text-to-image network")
    if stop_at is not None and stop_at < cfg.vae_steps + cfg.steps:
        return run_dir / "model"
    return export_pipeline(trained["model"], vae, scheduler, run_dir, cfg, data)


def export_pipeline(network: TextToImageNetwork | SD3TextNetwork, vae, scheduler, run_dir: Path, cfg: TrainConfig,
                    data: Dataset) -> Path:
    """Save model/: a StableDiffusion(3)Pipeline folder (safetensors) plus fewstep.json with the run's record."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    from fewstep import __version__
    from fewstep.models.pipeline_folder import load_pipeline_folder

    folder = run_dir / "model"
    flow = isinstance(network, SD3TextNetwork)
    if flow:
        vae.register_to_config(shift_factor=0.0)  # the pipeline adds the shift; the latents were encoded without one
        first, second = network.text_encoders
        pipe = StableDiffusion3Pipeline(transformer=network.transformer, scheduler=scheduler, vae=vae,
                                        text_encoder=first, tokenizer=network.tokenizer, text_encoder_2=second,
                                        tokenizer_2=network.tokenizer, text_encoder_3=None, tokenizer_3=None)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=network.text_encoder, tokenizer=network.tokenizer,
                                       unet=network.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    info = load_pipeline_folder(folder).info
    spec = data.spec
    reconstruction = json.loads((run_dir / "autoencoder" / "model" / "reconstruction.json").read_text())
    seconds = {"autoencoder": _seconds(run_dir / "autoencoder"), "unet": _seconds(run_dir / "unet")}
    info = replace(info, dataset=str(spec) if spec else cfg.dataset, data=spec.record() if spec else None,
                   sampler=dict(DEFAULT_FLOW_SAMPLER if flow else DEFAULT_SAMPLER),
                   acceleration={"cache": None, "guidance": None, "cfg_scale": DEFAULT_CFG_SCALE,
                                 "cfg_interval": None},
                   extra={**info.extra, "preset": cfg.preset, "text_encoder": cfg.text_encoder,
                          "train_steps": {"autoencoder": cfg.vae_steps, "unet": cfg.steps},
                          "train_seconds": seconds, "reconstruction": reconstruction,
                          **({"max_sequence_length": T5_TOKENS} if flow else {})})
    (folder / FEWSTEP_JSON).write_text(json.dumps({"fewstep_version": __version__, **asdict(info)}, indent=2))
    return folder
