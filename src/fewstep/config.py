"""Typed configs with presets; a TOML file and CLI flags override fields; the resolved config is written as TOML.

Every field's help text lives in its metadata (`option(default, "help")`); the command line is generated from it.
A distillation method keeps its own options in a dataclass beside its loss (fewstep.distill); the shared settings
of a distillation run are `DistillConfig`, and the training loop receives an explicit `LoopConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from fewstep.core.errors import UserError

T = TypeVar("T")


BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}  # a setting's text


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its command-line help in the metadata; `at_least=`, `above=` and `at_most=` bound a
    number (checked by build_config, which then also refuses NaN and infinity), `one_of=` lists the allowed values."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def help_of(f: dataclasses.Field) -> str:
    """A field's help text."""
    return f.metadata.get("help", "")


def _convert(value: Any, hint: Any) -> Any:
    """value (from TOML, a flag or a spec string) as type `hint`; ValueError if it is not one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                try:
                    return _convert(value, arg)
                except (ValueError, TypeError):
                    continue
        raise ValueError(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[value.lower()]
        raise ValueError(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(value)
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(value)
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        items = json.loads(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(value)
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        items = [_convert(v, args[0]) for v in items] if args else list(items)
        return origin(items)
    if isinstance(value, origin):
        return value
    raise ValueError(value)


BOUNDS = {"at_least": (lambda v, b: v >= b, "at least"), "above": (lambda v, b: v > b, "above"),
          "at_most": (lambda v, b: v <= b, "at most")}


def _check_bounds(f: dataclasses.Field, value: Any, where: str) -> None:
    """A one-line UserError when a bounded number is out of its bounds, NaN or infinite, or a value not one_of."""
    allowed = f.metadata.get("one_of")
    if allowed is not None and value not in allowed:
        raise UserError(f"{where}: {f.name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    bounds = [(k, f.metadata[k]) for k in BOUNDS if k in f.metadata]
    if not bounds or not isinstance(value, (int, float)):
        return
    for key, bound in bounds:
        holds, words = BOUNDS[key]
        if not (holds(value, bound) and math.isfinite(value)):
            raise UserError(f"{where}: {f.name} must be a finite number {words} {bound}, got {value!r}")


def _kind_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (tuple, list):
        return "a list like [0,3,7]"
    return getattr(hint, "__name__", str(hint))


def build_config(cls: type[T], *layers: dict[str, Any], where: str = "config") -> T:
    """The dataclass `cls` with layers of overrides applied in order (later wins), names and types checked.

    A value None leaves the field as it is; strings are converted (flags, 'name:key=value' specs). A mistake is a
    one-line UserError that starts with `where`.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls) if f.init}
    known = list(by_name)
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key not in known:
                raise UserError(f"{where} has no setting {key!r}; it takes {', '.join(known) or 'none'}")
            try:
                values[key] = _convert(value, hints[key])
            except (ValueError, TypeError, json.JSONDecodeError):
                raise UserError(f"{where}: setting {key!r} expects {_kind_name(hints[key])}, got {value!r}") from None
            _check_bounds(by_name[key], values[key], where)
    return cls(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def to_toml(values: dict[str, Any] | Any) -> str:
    """Render a flat dict (or dataclass) of scalars as TOML."""
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GuardConfig:
    """The divergence guard (train/loop.py): when it rolls back, and how often before it stops."""

    max_rollbacks: int = 3
    explode_factor: float = 1000.0
    patience: int = 200
    collapse_drop: float = 0.2


@dataclass(frozen=True)
class LoopConfig:
    """What the one training loop needs, filled explicitly by every caller."""

    steps: int
    batch_size: int
    lr: float
    lr_warmup_steps: int = 0
    lr_decay: str = "none"
    grad_clip: float = 0.0
    ema_halflife_steps: float = 100.0
    log_every: int = 50
    sample_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    guard: GuardConfig = GuardConfig()


LR_DECAYS = ("none", "cosine")  # constant, or half a cosine over the run (times the warm-up) down to LR_FLOOR x lr
LR_FLOOR = 0.1
EMA_HALFLIFE_HELP = ("EMA half-life in steps (the warm-up decay (1+s)/(10+s) averages fewer steps until step ~13x "
                     "the half-life)")

# settings every training command shares; a resumed run may change those in RESUMABLE_RUN
RESUMABLE_RUN = ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "device", "max_rollbacks")


@dataclass
class TrainConfig:
    """Teacher training: data, network, EDM loss, optimiser, EMA, and the run's bookkeeping."""

    dataset: str = option("digits", "a built-in set (digits, 8gaussians, checkerboard, moons, swissroll, shapes, "
                                    "captions) or your data: points:FILE | folder:DIR | hf:PATH | shards:PATH "
                                    "(docs/data.md)")
    resolution: int = option(0, "image size (0 = the dataset's own: 32 for shapes and captions, a folder's first "
                                "image's shorter side)", at_least=0)
    center_crop: bool = option(False, "crop images to a centred square before resizing (else squash)")
    objective: str = option("edm", "training objective: edm (EDM's denoising loss) | flow (flow matching, saved with "
                                   "a FlowMatchEulerDiscreteScheduler)")
    time_sampling: str = option("logit_normal", "flow: training times t ~ logit_normal (SD3) | uniform")
    flow_shift: float = option(1.0, "flow: the scheduler's timestep shift recorded for sampling (SD3 uses 3)",
                               above=0.0)
    arch: str = option("auto", "network: unet | dit | mlp | auto (unet for images, mlp for 2-D)")
    preset: str = option("small", "size and length: tiny (tests) | small (CPU) | base (GPU)")
    conditional: bool = option(True, "train class-conditional when the dataset has labels (true/false)")
    label_dropout: float = option(0.1, "probability of the null label (the empty prompt for captions), for "
                                       "classifier-free guidance", at_least=0.0, at_most=1.0)
    text_encoder: str = option("auto", "captions: the CLIP text encoder is trained with the network (trained) or "
                                       "kept at its random initialisation (frozen); auto: frozen for the U-Net, "
                                       "trained for --objective flow (the better of each, docs/BENCHMARKS.md §13)")
    prediction_type: str = option("v_prediction", "captions: what the U-Net predicts: v_prediction (SD 2's; learns the "
                                                  "layout about twice as fast, docs/BENCHMARKS.md §13) | epsilon (SD 1's)")
    vae_steps: int = option(2000, "captions: optimiser steps of the autoencoder stage (before the U-Net's steps)",
                            at_least=1)
    steps: int = option(4000, "number of optimiser steps", at_least=1)
    batch_size: int = option(128, "global batch size (split over processes)", at_least=1)
    lr: float = option(1e-3, "Adam learning rate", above=0.0)
    lr_warmup_steps: int = option(200, "linear learning-rate warm-up", at_least=0)
    lr_decay: str = option("none", "learning-rate decay: none (constant after warm-up) | cosine (half a cosine over "
                                   "the run's steps, times the warm-up, down to 0.1x at the last step)",
                           one_of=LR_DECAYS)
    grad_clip: float = option(1.0, "gradient-norm clip (0 = off)", at_least=0.0)
    ema_halflife_steps: float = option(400.0, EMA_HALFLIFE_HELP, above=0.0)
    p_mean: float = option(-1.2, "mean of ln(sigma) during training (EDM's log-normal noise)")
    p_std: float = option(1.2, "std of ln(sigma) during training (EDM)", above=0.0)
    sigma_min: float = option(0.002, "smallest sigma the model is sampled at", above=0.0)
    sigma_max: float = option(80.0, "largest sigma the model is sampled at", above=0.0)
    seed: int = option(0, "seed for initialisation, batches and noise")
    log_every: int = option(50, "steps between metrics.jsonl lines", at_least=1)
    sample_every: int = option(1000, "steps between preview grids (0 = only at the end)", at_least=0)
    checkpoint_every: int = option(500, "steps between checkpoints", at_least=0)
    keep_checkpoints: int = option(2, "how many checkpoints to keep", at_least=1)
    max_rollbacks: int = option(3, "divergence guard: roll-backs (lower lr each time) before giving up", at_least=0)
    explode_factor: float = option(1000.0, "divergence guard: |loss| above this times its recent median rolls back "
                                           "(0 = off)", at_least=0.0)
    device: str = option("auto", "device to train on: auto | cpu | cuda")
    mixed_precision: str = option("no", "mixed precision of training: no | bf16 | fp16")

    RESUMABLE_CHANGES = ("steps", *RESUMABLE_RUN)

    def loop(self) -> LoopConfig:
        """The training loop's settings."""
        return LoopConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                          lr_warmup_steps=self.lr_warmup_steps, lr_decay=self.lr_decay, grad_clip=self.grad_clip,
                          ema_halflife_steps=self.ema_halflife_steps, log_every=self.log_every,
                          sample_every=self.sample_every, checkpoint_every=self.checkpoint_every,
                          keep_checkpoints=self.keep_checkpoints,
                          guard=GuardConfig(max_rollbacks=self.max_rollbacks, explode_factor=self.explode_factor))


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
    # latent text-to-image (captions): vae_steps of the autoencoder, then steps of the U-Net (train/text2image.py)
    ("tiny", "text"): dict(vae_steps=6, steps=6, batch_size=8, lr_warmup_steps=2, lr_decay="cosine",
                           ema_halflife_steps=3, log_every=2, sample_every=0, checkpoint_every=3),
    ("small", "text"): dict(vae_steps=800, steps=4000, batch_size=32, lr=1e-3, lr_decay="cosine",
                            ema_halflife_steps=300, sample_every=500, checkpoint_every=250),
    ("base", "text"): dict(vae_steps=20_000, steps=100_000, batch_size=256, lr=5e-4, ema_halflife_steps=2000,
                           sample_every=5000, checkpoint_every=2000),
}


@dataclass
class DistillConfig:
    """Distillation settings every method shares: teacher, student, run length, optimiser, guard, bookkeeping.

    A method's own options are in its options dataclass (fewstep.distill.METHODS[name].options).
    """

    teacher: str = option("", "the teacher: run directory, fewstep model folder or diffusers folder")
    method: str = option("consistency", "the distillation method (see fewstep distill --help's list)")
    steps: str = option("1,2,4", "student step counts, e.g. 1,2,4 (progressive exports each; others record them)")
    dataset: str = option("", "dataset to train the student on (default: the teacher's dataset)")
    preset: str = option("small", "run length: tiny (tests) | small (CPU) | base (GPU)")
    student_preset: str = option("", "'' = the teacher's network and weights; tiny | small | base = a fresh network "
                                     "of that size")
    init: str = option("teacher", "teacher (start from its weights) | scratch | a model folder (e.g. a student to "
                                  "fine-tune)")
    cfg_scale: float = option(1.0, "classifier-free guidance scale folded into the teacher's targets (1 = none; "
                                   "unset on a text-to-image teacher: its recorded scale)", at_least=0.0)
    prompts: str = option("", "text-to-image, data-free methods (reflow, sid, dmd2 without its GAN term): a UTF-8 "
                              "file of prompts, one per line, in place of a dataset's captions")
    negative_prompt: str = option("", "text-to-image: the null condition of the guidance folded into the teacher "
                                      "('' = the pipeline's own, the empty prompt)")
    train_steps: int = option(1500, "optimiser steps of each stage (each progressive round)", at_least=1)
    batch_size: int = option(128, "global batch size (split over processes)", at_least=1)
    lr: float = option(2e-4, "Adam learning rate", above=0.0)
    lr_warmup_steps: int = option(100, "linear learning-rate warm-up", at_least=0)
    grad_clip: float = option(1.0, "gradient-norm clip (0 = off)", at_least=0.0)
    ema_halflife_steps: float = option(200.0, EMA_HALFLIFE_HELP, above=0.0)
    solver: str = option("heun", "the teacher's ODE step: euler | heun")
    explode_factor: float = option(1000.0, "divergence guard: |loss| above this times its recent median rolls back "
                                           "(0 = off)", at_least=0.0)
    guard_patience: int = option(200, "divergence guard: steps a method may report trouble (a winning "
                                      "discriminator) in a row", at_least=1)
    monitor_n: int = option(500, "divergence guard: samples whose precision, recall and mode/class coverage are "
                                 "checked before each checkpoint (0 = off)", at_least=0)
    collapse_drop: float = option(0.2, "divergence guard: precision, recall or coverage this far below the run's best "
                                       "rolls back", above=0.0)
    seed: int = option(0, "seed for initialisation, batches and noise")
    log_every: int = option(50, "steps between metrics.jsonl lines", at_least=1)
    sample_every: int = option(500, "steps between preview grids (0 = only at the end)", at_least=0)
    checkpoint_every: int = option(250, "steps between checkpoints", at_least=0)
    keep_checkpoints: int = option(2, "how many checkpoints to keep", at_least=1)
    max_rollbacks: int = option(3, "divergence guard: roll-backs (lower lr each time) before stopping", at_least=0)
    device: str = option("auto", "device to train on: auto | cpu | cuda")
    mixed_precision: str = option("no", "mixed precision of training: no | bf16 | fp16")
    # a LoRA student (peft) on the teacher's network instead of the full student; auxiliary networks stay full
    lora_rank: int = option(0, "LoRA rank of the student (0 = train the full student)", at_least=0)
    lora_alpha: float = option(0.0, "LoRA alpha (0 = the rank: scale 1)", at_least=0.0)
    lora_targets: str = option("to_q,to_k,to_v,to_out.0", "LoRA target modules, comma-separated names (peft's "
                                                          "target_modules)")
    gradient_checkpointing: bool = option(False, "recompute the student network's activations in the backward pass "
                                                 "(diffusers networks that support it)")
    options: Any = field(default=None, init=False, compare=False)  # the method's options dataclass

    RESUMABLE_CHANGES = ("train_steps", *RESUMABLE_RUN, "explode_factor", "guard_patience", "monitor_n",
                         "collapse_drop")

    def flat(self) -> dict[str, Any]:
        """The shared settings and the method's options as one flat dict (config.toml, resume checks)."""
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return {**shared, **(dataclasses.asdict(self.options) if self.options is not None else {})}

    def loop(self) -> LoopConfig:
        """The training loop's settings for one stage."""
        return LoopConfig(steps=self.train_steps, batch_size=self.batch_size, lr=self.lr,
                          lr_warmup_steps=self.lr_warmup_steps, grad_clip=self.grad_clip,
                          ema_halflife_steps=self.ema_halflife_steps, log_every=self.log_every,
                          sample_every=self.sample_every, checkpoint_every=self.checkpoint_every,
                          keep_checkpoints=self.keep_checkpoints,
                          guard=GuardConfig(self.max_rollbacks, self.explode_factor, self.guard_patience,
                                            self.collapse_drop))


DISTILL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("tiny", "image"): dict(train_steps=6, batch_size=16, lr_warmup_steps=2, ema_halflife_steps=3, log_every=2,
                            sample_every=0, checkpoint_every=3, monitor_n=0),
    ("tiny", "vector"): dict(train_steps=6, batch_size=64, lr_warmup_steps=2, ema_halflife_steps=3, log_every=2,
                             sample_every=0, checkpoint_every=3, monitor_n=0),
    ("small", "image"): dict(train_steps=1500, batch_size=128),
    ("small", "vector"): dict(train_steps=2000, batch_size=512, lr=5e-4),
    ("base", "image"): dict(train_steps=20_000, batch_size=256, ema_halflife_steps=2000, sample_every=2000,
                            checkpoint_every=1000),
    ("base", "vector"): dict(train_steps=10_000, batch_size=1024, lr=5e-4, ema_halflife_steps=1000, sample_every=2000,
                             checkpoint_every=1000),
}


def resolve_config(cls: type[T], presets: dict[tuple[str, str], dict[str, Any]], kind_of: Callable[[T], str],
                   overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                   resume: bool = False) -> T:
    """defaults < preset (by data kind) < config file < flags; a resumed run starts from its own config.toml."""
    file_layer = read_toml(config_file) if config_file else {}
    saved = Path(out) / "config.toml" if out else None
    if resume and saved is not None and saved.exists():
        base = build_config(cls, read_toml(saved))
        cfg = build_config(cls, dataclasses.asdict(base), file_layer, overrides)
        check_resume_changes(dataclasses.asdict(base), dataclasses.asdict(cfg), cls.RESUMABLE_CHANGES)
        return cfg
    layered = build_config(cls, file_layer, overrides)
    kind = kind_of(layered)
    if (layered.preset, kind) not in presets:
        raise UserError(f"unknown preset {layered.preset!r}; choose tiny, small or base")
    return build_config(cls, presets[(layered.preset, kind)], file_layer, overrides)


def check_resume_changes(saved: dict[str, Any], now: dict[str, Any], resumable: tuple[str, ...]) -> None:
    """Refuse a resumed run whose settings differ from its saved ones, except those in `resumable`."""
    changed = [k for k in now if now[k] != saved.get(k, now[k]) and k not in resumable]
    if changed:
        raise UserError(f"cannot change {', '.join(changed)} when resuming; start a new --out instead")
