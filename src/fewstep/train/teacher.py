"""Train a teacher: dataset + network preset + EDM or flow-matching loss through the shared loop, exported as a model
folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fewstep.config import TRAIN_PRESETS, TrainConfig, resolve_config, to_toml
from fewstep.core.errors import UserError
from fewstep.core.files import read_json, read_json_lines, replaced_folder
from fewstep.core.precond import EDMPrecond
from fewstep.data import Dataset, batch_source, load_dataset, parse_spec, probe
from fewstep.data.visualize import save_curve, save_samples
from fewstep.models.flow import default_sampling, flow_denoiser
from fewstep.models.io import ModelInfo, save_model
from fewstep.models.networks import arch_of, build_network, call_network
from fewstep.runlock import locked
from fewstep.train.checkpoint import latest_checkpoint
from fewstep.train.edm import EDMTraining
from fewstep.train.flow import FlowMatchingTraining
from fewstep.train.guard import check_export
from fewstep.train.loop import run_loop

GRID_SEED, GRID_N, SCATTER_N, GRID_STEPS = 0, 64, 2000, 18


def _data_kind(cfg: TrainConfig) -> str:
    """The presets' data kind: "text" for captioned images (a latent text-to-image teacher), else the data's kind."""
    spec = parse_spec(cfg.dataset, resolution=cfg.resolution or None)
    return "text" if (spec.kind, spec.path) == ("builtin", "captions") else probe(spec)[0]


def resolve_train_config(overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                         resume: bool = False) -> TrainConfig:
    """defaults < preset (by the data's kind, read from the data) < config file < flags; a resumed run starts from
    its own config.toml."""
    return resolve_config(TrainConfig, TRAIN_PRESETS, _data_kind, overrides, config_file, out, resume)


def make_teacher(cfg: TrainConfig, data: Dataset) -> nn.Module:
    """A fresh network of the configured arch/preset behind EDM preconditioning or the flow-matching adapter."""
    arch = cfg.arch if cfg.arch != "auto" else ("unet" if data.kind == "image" else "mlp")
    num_classes = data.num_classes if cfg.conditional else 0
    net = build_network(arch, cfg.preset, data.shape, num_classes)
    if cfg.objective == "flow":
        return flow_denoiser(net, num_classes, data.sigma_data, {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                                 "shift": cfg.flow_shift})
    if cfg.objective != "edm":
        raise UserError(f"unknown objective {cfg.objective!r}; choose edm or flow")
    return EDMPrecond(net, call_network, data.sigma_data, cfg.sigma_min, cfg.sigma_max, num_classes)


def preview_plan(denoiser: nn.Module) -> tuple[str, torch.Tensor]:
    """The previews' sampler and sigmas: the model's own scheduler with Euler (flow models), else 18 Heun steps."""
    from fewstep.core.schedules import make_schedule

    if denoiser.sigma_range.scheduler is not None:
        return "euler", make_schedule("scheduler", 2 * GRID_STEPS, denoiser.sigma_range)
    return "heun", make_schedule("karras", GRID_STEPS, denoiser.sigma_range)


def preview(denoiser: nn.Module, data: Dataset, path: Path, sampler: str | None = None,
            sigmas: torch.Tensor | None = None) -> Path:
    """Sample a fixed-seed grid (64 images) or scatter (2000 points) with the given or the preview plan; labels
    cycle."""
    n = GRID_N if data.kind == "image" else SCATTER_N
    from fewstep.samplers import generate

    if sigmas is None:
        sampler, sigmas = preview_plan(denoiser)
    labels = torch.arange(n) % denoiser.num_classes if denoiser.num_classes else None
    device = next(denoiser.parameters()).device
    out = generate(denoiser, data.shape, n, sigmas, sampler, GRID_SEED, labels, device=device)
    return save_samples(out.samples, path, data.test if data.kind == "vector" else None)


def load_training_data(cfg: TrainConfig) -> Dataset:
    """The dataset a config names, with its resolution and crop options."""
    return load_dataset(cfg.dataset, cfg.resolution or None, **({"center_crop": True} if cfg.center_crop else {}))


@locked("out")
def train_teacher(cfg: TrainConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
                  data: Dataset | None = None) -> Path:
    """Train and export a teacher into run directory `out`; returns the exported model folder (captions: a latent
    text-to-image StableDiffusionPipeline folder, fewstep.train.text2image).

    `data` (e.g. fewstep.data.dataset_from_tensors(x)) replaces the dataset `cfg.dataset` names.
    """
    if _data_kind(cfg) == "text":
        from fewstep.train.text2image import train_text_to_image
        return train_text_to_image(cfg, out, resume, stop_at, data)
    run_dir = Path(out)
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("step-*")) and not resume:
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    data = data if data is not None else load_training_data(cfg)
    if cfg.conditional and data.num_classes == 0:
        cfg = replace(cfg, conditional=False)
    torch.manual_seed(cfg.seed)  # network initialisation; everything later is seeded per step
    teacher = make_teacher(cfg, data)
    dropout = cfg.label_dropout if cfg.conditional else 0.0
    method = (FlowMatchingTraining(teacher, cfg.time_sampling, label_dropout=dropout) if cfg.objective == "flow"
              else EDMTraining(teacher, cfg.p_mean, cfg.p_std, dropout))
    from fewstep.train.loop import make_accelerator

    acc = make_accelerator(cfg.device, cfg.mixed_precision)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(cfg))

    def on_sample(step: int, modules: dict) -> None:
        preview(modules["model"], data, run_dir / "samples" / f"step-{step:07d}.png")

    modules = run_loop(method, batch_source(data, cfg.seed, cfg.conditional), cfg.loop(), run_dir, on_sample, acc,
                       stop_at, desc="train teacher")
    if not acc.is_main_process or (stop_at is not None and stop_at < cfg.steps):
        return run_dir / "model"
    ema = modules["model"]
    state = read_json(latest_checkpoint(run_dir / "checkpoints") / "state.json", "a checkpoint's state")
    spec = data.spec
    info = ModelInfo(arch=arch_of(ema.network), network_class=type(ema.network).__name__, sigma_data=ema.sigma_data,
                     sigma_min=ema.sigma_range.sigma_min, sigma_max=ema.sigma_range.sigma_max,
                     num_classes=ema.num_classes, dataset=str(spec) if spec else cfg.dataset,
                     data=spec.record() if spec else None, kind=data.kind, shape=list(data.shape),
                     extra={"train_steps": cfg.steps, "train_seconds": round(state["train_seconds"], 1),
                            "preset": cfg.preset})
    scheduler = None
    if cfg.objective == "flow":
        scheduler = ema.schedule.to_config()
        info = replace(info, parameterization="flow", sampler=default_sampling(scheduler))
    check_export(ema, data.shape)
    with replaced_folder(run_dir / "model") as tmp:
        save_model(tmp, ema.network, info, scheduler_config=scheduler)
    model_dir = run_dir / "model"
    preview(ema, data, run_dir / "samples" / "final.png")
    _loss_plot(run_dir, "flow-matching loss" if cfg.objective == "flow" else "EDM loss")
    return model_dir


def _loss_plot(run_dir: Path, label: str) -> None:
    rows = [r for r in read_json_lines(run_dir / "metrics.jsonl", "a metrics log") if "loss_model" in r]
    if rows:
        save_curve([r["step"] for r in rows], [r["loss_model"] for r in rows], run_dir / "loss.png",
                   label, f"training loss ({run_dir.name})")
