"""Train a teacher: dataset + network preset + EDM loss through the shared loop, exported as a model folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fewstep.config import TRAIN_PRESETS, TrainConfig, resolve_config, to_toml
from fewstep.core.errors import UserError
from fewstep.core.precond import EDMPrecond
from fewstep.data import Dataset, load_dataset
from fewstep.data.toy2d import TOY_SETS
from fewstep.data.visualize import save_curve, save_samples
from fewstep.models.io import ModelInfo, save_model
from fewstep.models.networks import arch_of, build_network, call_network
from fewstep.train.checkpoint import latest_checkpoint
from fewstep.train.edm import EDMTraining
from fewstep.data.batches import TensorSource
from fewstep.train.loop import run_loop

GRID_SEED, GRID_N, SCATTER_N, GRID_STEPS = 0, 64, 2000, 18


def resolve_train_config(overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                         resume: bool = False) -> TrainConfig:
    """defaults < preset (by data kind) < config file < flags; a resumed run starts from its own config.toml."""
    return resolve_config(TrainConfig, TRAIN_PRESETS, lambda c: "vector" if c.dataset in TOY_SETS else "image",
                          overrides, config_file, out, resume)


def make_teacher(cfg: TrainConfig, data: Dataset) -> EDMPrecond:
    """A fresh network of the configured arch/preset behind EDM preconditioning."""
    arch = cfg.arch if cfg.arch != "auto" else ("unet" if data.kind == "image" else "mlp")
    num_classes = data.num_classes if cfg.conditional else 0
    net = build_network(arch, cfg.preset, data.shape, num_classes)
    return EDMPrecond(net, call_network, data.sigma_data, cfg.sigma_min, cfg.sigma_max, num_classes)


def preview(denoiser: nn.Module, data: Dataset, path: Path, sampler: str = "heun",
            sigmas: torch.Tensor | None = None) -> Path:
    """Sample a fixed-seed grid (64 images) or scatter (2000 points), by default with 18 Heun steps; labels cycle."""
    n = GRID_N if data.kind == "image" else SCATTER_N
    from fewstep.core.schedules import make_schedule
    from fewstep.samplers import generate

    if sigmas is None:
        sigmas = make_schedule("karras", GRID_STEPS, denoiser.sigma_range)
    labels = torch.arange(n) % denoiser.num_classes if denoiser.num_classes else None
    device = next(denoiser.parameters()).device
    out = generate(denoiser, data.shape, n, sigmas, sampler, GRID_SEED, labels, device=device)
    return save_samples(out.samples, path, data.test if data.kind == "vector" else None)


def train_teacher(cfg: TrainConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> Path:
    """Train and export a teacher into run directory `out`; returns the exported model folder."""
    run_dir = Path(out)
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("step-*")) and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    data = load_dataset(cfg.dataset, cfg.resolution or None)
    if cfg.conditional and data.num_classes == 0:
        cfg = replace(cfg, conditional=False)
    torch.manual_seed(cfg.seed)  # network initialisation; everything later is seeded per step
    teacher = make_teacher(cfg, data)
    method = EDMTraining(teacher, cfg.p_mean, cfg.p_std, cfg.label_dropout if cfg.conditional else 0.0)
    from fewstep.train.loop import make_accelerator

    acc = make_accelerator(cfg.device, cfg.mixed_precision)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(cfg))
    labels = data.train_labels if cfg.conditional else None

    def on_sample(step: int, modules: dict) -> None:
        preview(modules["model"], data, run_dir / "samples" / f"step-{step:07d}.png")

    modules = run_loop(method, TensorSource(data.train, labels, cfg.seed), cfg.loop(), run_dir, on_sample, acc, stop_at)
    if not acc.is_main_process or (stop_at is not None and stop_at < cfg.steps):
        return run_dir / "model"
    ema = modules["model"]
    state = json.loads((latest_checkpoint(run_dir / "checkpoints") / "state.json").read_text())
    info = ModelInfo(arch=arch_of(ema.network), network_class=type(ema.network).__name__, sigma_data=ema.sigma_data,
                     sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, num_classes=ema.num_classes,
                     dataset=cfg.dataset, kind=data.kind, shape=list(data.shape),
                     extra={"train_steps": cfg.steps, "train_seconds": round(state["train_seconds"], 1),
                            "preset": cfg.preset})
    model_dir = save_model(run_dir / "model", ema.network, info)
    preview(ema, data, run_dir / "samples" / "final.png")
    _loss_plot(run_dir)
    return model_dir


def _loss_plot(run_dir: Path) -> None:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "loss_model" in r]
    if rows:
        save_curve([r["step"] for r in rows], [r["loss_model"] for r in rows], run_dir / "loss.png",
                   "EDM loss", f"training loss ({run_dir.name})")
