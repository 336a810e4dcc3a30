"""Typed configs with presets; a TOML file and CLI flags override fields; the resolved config is written as TOML."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

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
