"""Typed configs with presets; a TOML file and CLI flags override fields; the resolved config is written as TOML."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from fewstep.core.errors import UserError

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Teacher training: data, network, EDM loss, optimiser, EMA, and the run's bookkeeping."""

    dataset: str = "digits"
    resolution: int = 0  # for shapes and folder:PATH; 0 = the dataset's default
    arch: str = "auto"  # unet | dit | mlp; auto = unet for images, mlp for vectors
    preset: str = "small"  # network size and training length: tiny | small | base
    conditional: bool = True  # class-conditional when the dataset has labels
    label_dropout: float = 0.1  # probability of training with the null label (classifier-free guidance)
    steps: int = 4000
    batch_size: int = 128  # global batch, split over processes
    lr: float = 1e-3
    lr_warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_halflife_steps: float = 400.0
    p_mean: float = -1.2  # EDM's log-normal training noise: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000  # 0 = only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_rollbacks: int = 3  # divergence guard: roll back to the last checkpoint with half the lr, at most this often
    explode_factor: float = 1000.0  # divergence guard: a loss above this many times its recent median (0 = off)
    device: str = "auto"
    mixed_precision: str = "no"  # no | bf16 | fp16

    # fields that may change when a run is resumed; every other field must match the run's config.toml
    RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "device")


TRAIN_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("tiny", "image"): dict(steps=20, batch_size=16, lr_warmup_steps=5, ema_halflife_steps=10, log_every=5,
                            sample_every=0, checkpoint_every=10),
    ("tiny", "vector"): dict(steps=20, batch_size=64, lr_warmup_steps=5, ema_halflife_steps=10, log_every=5,
                             sample_every=0, checkpoint_every=10),
    ("small", "image"): dict(steps=4000, batch_size=128, lr=1e-3, ema_halflife_steps=400),
    ("small", "vector"): dict(steps=3000, batch_size=512, lr=1e-3, ema_halflife_steps=300),
    ("base", "image"): dict(steps=100_000, batch_size=256, lr=1e-3, ema_halflife_steps=2000, sample_every=5000,
                            checkpoint_every=2000),
    ("base", "vector"): dict(steps=20_000, batch_size=1024, lr=1e-3, ema_halflife_steps=1000, sample_every=5000,
                             checkpoint_every=2000),
}


def field_names(cls: type) -> list[str]:
    """The config fields of a dataclass type."""
    return [f.name for f in fields(cls)]


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def build_config(cls: type[T], *layers: dict[str, Any]) -> T:
    """Apply layers of overrides (later wins) to the dataclass defaults, checking names and types."""
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key not in known:
                raise UserError(f"unknown config field {key!r}; known fields: {', '.join(known)}")
            values[key] = _coerce(key, value, type(getattr(cls(), key)))
    return cls(**values)


def resolve_config(cls: type[T], presets: dict[tuple[str, str], dict[str, Any]], kind_of: Callable[[T], str],
                   overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                   resume: bool = False) -> T:
    """defaults < preset (by data kind) < config file < flags; a resumed run starts from its own config.toml."""
    file_layer = read_toml(config_file) if config_file else {}
    saved = Path(out) / "config.toml" if out else None
    if resume and saved is not None and saved.exists():
        base = build_config(cls, read_toml(saved))
        cfg = build_config(cls, dataclasses.asdict(base), file_layer, overrides)
        changed = [k for k in dataclasses.asdict(cfg)
                   if getattr(cfg, k) != getattr(base, k) and k not in cls.RESUMABLE_CHANGES]
        if changed:
            raise UserError(f"cannot change {', '.join(changed)} when resuming; start a new --out instead")
        return cfg
    layered = build_config(cls, file_layer, overrides)
    kind = kind_of(layered)
    if (layered.preset, kind) not in presets:
        raise UserError(f"unknown preset {layered.preset!r}; choose tiny, small or base")
    return build_config(cls, presets[(layered.preset, kind)], file_layer, overrides)


def _coerce(key: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind is float and isinstance(value, (int, float, str)):
            return float(value)
        if kind is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if kind is str:
            return str(value)
        if isinstance(value, kind):
            return value
    except ValueError:
        pass
    raise UserError(f"config field {key!r} expects {kind.__name__}, got {value!r}")


def to_toml(config: Any) -> str:
    """Render a flat dataclass config as TOML."""
    lines = []
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@dataclass
class DistillConfig:
    """Distillation: teacher, method, student steps and size, the methods' knobs, and the run's bookkeeping."""

    teacher: str = ""  # run dir, fewstep model folder or diffusers folder
    method: str = "consistency"  # progressive | consistency | reflow | dmd2 | add | lightning
    steps: str = "1,2,4"  # student step counts to make (progressive) or record and check (consistency, reflow)
    dataset: str = ""  # training data for progressive/consistency; default: the teacher's
    preset: str = "small"  # run length: tiny | small | base
    student_preset: str = ""  # "" = the teacher's network and weights; tiny|small|base = a fresh network of that size
    init: str = "teacher"  # teacher = the teacher's weights | scratch = re-initialise | a model folder (fine-tune a student)
    cfg_scale: float = 1.0  # classifier-free guidance folded into the teacher's targets (class-conditional teachers)
    train_steps: int = 1500  # optimiser steps of each stage (each progressive round)
    batch_size: int = 128
    lr: float = 2e-4
    lr_warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_halflife_steps: float = 200.0
    solver: str = "heun"  # the teacher's ODE step: euler | heun
    pd_start_steps: int = 16  # progressive, lightning: student steps of the first round (its teacher takes twice as many)
    cd_grid: int = 18  # consistency: Karras grid of the teacher's ODE
    cd_skip: int = 1  # consistency: grid points one teacher step skips (LCM's skipping-step k)
    cd_target_ema: float = 0.95  # consistency: target network = EMA of the student with this decay (0 = stop-grad copy)
    distance: str = "l2"  # consistency: l2 | huber (pseudo-Huber, improved CT) | feature (dataset classifier space)
    boundary_scale: float = 10.0  # consistency: time scaling of c_skip/c_out (LCM)
    reflow_pairs: int = 8192  # reflow: (noise, teacher sample) pairs generated once
    reflow_solver_steps: int = 18  # reflow: teacher steps per pair
    dmd_fake_updates: int = 5  # dmd2: fake-score updates per generator update (two time-scale rule)
    dmd_gan_weight: float = 3e-3  # dmd2: weight of the GAN term on the fake score's features (0 = none)
    adv_distill_weight: float = 2.5  # add: weight of the teacher's score-distillation term (0 = LADD, adversarial only)
    adv_r1_gamma: float = 1.0  # add, lightning: approximate-R1 penalty on the discriminator (0 = none)
    adv_disc_lr_scale: float = 10.0  # add, lightning: the discriminator heads' learning rate / the student's
    explode_factor: float = 1000.0  # guard: a loss above this many times its recent median rolls back (0 = off)
    guard_patience: int = 200  # guard: consecutive steps a method may report trouble (a winning discriminator)
    monitor_n: int = 500  # guard: samples whose recall is checked before each checkpoint (0 = off)
    collapse_drop: float = 0.2  # guard: a recall this far below the run's best is a collapse: roll back
    seed: int = 0
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_rollbacks: int = 3
    device: str = "auto"
    mixed_precision: str = "no"

    RESUMABLE_CHANGES = ("train_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "device",
                         "max_rollbacks", "explode_factor", "guard_patience", "monitor_n", "collapse_drop")


DISTILL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("tiny", "image"): dict(train_steps=6, batch_size=16, lr_warmup_steps=2, ema_halflife_steps=3, log_every=2,
                            sample_every=0, checkpoint_every=3, monitor_n=0, pd_start_steps=2, cd_grid=8, reflow_pairs=32, reflow_solver_steps=6),
    ("tiny", "vector"): dict(train_steps=6, batch_size=64, lr_warmup_steps=2, ema_halflife_steps=3, log_every=2,
                             sample_every=0, checkpoint_every=3, monitor_n=0, pd_start_steps=2, cd_grid=8, reflow_pairs=256,
                             reflow_solver_steps=6),
    ("small", "image"): dict(train_steps=1500, batch_size=128),
    ("small", "vector"): dict(train_steps=2000, batch_size=512, lr=5e-4, reflow_pairs=32768),
    ("base", "image"): dict(train_steps=20_000, batch_size=256, ema_halflife_steps=2000, sample_every=2000,
                            checkpoint_every=1000, pd_start_steps=64, cd_grid=40, reflow_pairs=100_000),
    ("base", "vector"): dict(train_steps=10_000, batch_size=1024, lr=5e-4, ema_halflife_steps=1000, sample_every=2000,
                             checkpoint_every=1000, pd_start_steps=64, cd_grid=40, reflow_pairs=200_000),
}
