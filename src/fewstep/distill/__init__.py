"""Distillation: one module per method over the shared training loop, each with its options beside its loss.

`METHODS` is the registry: a method is a `run(ctx) -> exported folders` function and an options dataclass whose
fields (with help in their metadata and presets in `PRESETS`) become the `fewstep distill` flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from fewstep.config import DISTILL_PRESETS, DistillConfig, build_config, check_resume_changes, read_toml
from fewstep.core.errors import UserError
from fewstep.core.files import read_json
from fewstep.distill import adversarial, consistency, dmd, progressive, reflow, sid
from fewstep.distill.common import DistillContext, check_empty
from fewstep.runlock import locked


@dataclass(frozen=True)
class DistillMethod:
    """A registered method: how it runs, its options dataclass, and a one-line summary."""

    run: Callable[[DistillContext], list[Path]]
    options: type
    summary: str


METHODS: dict[str, DistillMethod] = {
    "progressive": DistillMethod(progressive.run, progressive.ProgressiveOptions,
                                 "rounds that halve the steps, one student step = two teacher steps"),
    "consistency": DistillMethod(consistency.run, consistency.ConsistencyOptions,
                                 "map any point of a teacher ODE trajectory to its end (LCM-style)"),
    "reflow": DistillMethod(reflow.run, reflow.ReflowOptions, "straighten the flow on (noise, teacher sample) pairs"),
    "dmd2": DistillMethod(dmd.run, dmd.DMD2Options, "distribution matching with an online fake score (+ GAN term)"),
    "sid": DistillMethod(sid.run, sid.SiDOptions, "score identity distillation: data-free, beats its teacher in the "
                                                  "paper (SiD)"),
    "add": DistillMethod(adversarial.run_add, adversarial.AdversarialOptions,
                         "adversarial diffusion distillation on the teacher's features (ADD / LADD)"),
    "lightning": DistillMethod(adversarial.run_lightning, adversarial.LightningOptions,
                               "progressive rounds judged by a discriminator (SDXL-Lightning)"),
}


def option_owners() -> dict[str, tuple[Any, list[str]]]:
    """Every method option's field and the methods that take it, by name."""
    owners: dict[str, tuple[Any, list[str]]] = {}
    for name, method in METHODS.items():
        for f in fields(method.options):
            owners.setdefault(f.name, (f, []))[1].append(name)
    return owners


def _split(layer: dict[str, Any], method: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared settings, the method's options) of one layer; another method's option is a one-line error."""
    shared = {f.name for f in fields(DistillConfig) if f.init}
    mine = {f.name for f in fields(METHODS[method].options)}
    owners = option_owners()
    for key, value in layer.items():
        if key not in shared | mine and key in owners and value is not None:
            raise UserError(f"{where}: {key} is an option of {', '.join(owners[key][1])}, not of method {method}")
    return ({k: v for k, v in layer.items() if k not in mine}, {k: v for k, v in layer.items() if k in mine})


def _teacher_record(cfg: DistillConfig) -> tuple[str, dict[str, Any]]:
    """(the preset kind of the teacher's items, its defaults): a latent text-to-image teacher takes the image presets
    and, unless told otherwise, folds in the guidance it samples with (its record's scale, else TEXT_CFG_SCALE)."""
    from fewstep.models.info import TEXT_CFG_SCALE
    from fewstep.models.io import FEWSTEP_JSON, resolve_model_dir
    from fewstep.models.pipeline_folder import is_text_pipeline

    if not cfg.teacher:
        raise UserError("--teacher is required: a run directory, fewstep model folder or diffusers folder")
    folder = resolve_model_dir(cfg.teacher)
    info = folder / FEWSTEP_JSON
    record = read_json(info, "a fewstep.json model record") if info.exists() else {}
    if not isinstance(record, dict):
        raise UserError(f"{info} is not a fewstep.json model record (not a JSON object)")
    kind = str(record.get("kind", "image"))
    if not is_text_pipeline(folder):
        return kind, {}
    recorded = (record.get("acceleration") or {}).get("cfg_scale")
    return "image" if kind == "latent" else kind, {"cfg_scale": TEXT_CFG_SCALE if recorded is None else recorded}


def resolve_distill_config(overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                           resume: bool = False) -> DistillConfig:
    """defaults < presets (by the teacher's data kind) < the teacher's own (a text teacher's CFG scale) < config file <
    flags; a resumed run keeps its config.toml.

    The result's `options` holds the method's options dataclass.
    """
    file_layer = read_toml(config_file) if config_file else {}
    saved_path = Path(out) / "config.toml" if out else None
    saved = read_toml(saved_path) if resume and saved_path is not None and saved_path.exists() else None
    method = str(overrides.get("method") or file_layer.get("method") or (saved or {}).get("method")
                 or DistillConfig.method)
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    options_cls = METHODS[method].options
    file_shared, file_opts = _split(file_layer, method, f"config file {config_file}")
    flag_shared, flag_opts = _split(overrides, method, "distill")
    if saved is not None:
        saved_shared, saved_opts = _split(saved, method, str(saved_path))
        base = build_config(DistillConfig, saved_shared, where=str(saved_path))
        base.options = build_config(options_cls, saved_opts, where=str(saved_path))
        cfg = build_config(DistillConfig, saved_shared, file_shared, flag_shared, where="distill")
        cfg.options = build_config(options_cls, asdict(base.options), file_opts, flag_opts, where="distill")
        check_resume_changes(base.flat(), cfg.flat(), DistillConfig.RESUMABLE_CHANGES)
        return cfg
    layered = build_config(DistillConfig, file_shared, flag_shared, where="distill")
    kind, teacher_defaults = _teacher_record(layered)
    key = (layered.preset, kind)
    if key not in DISTILL_PRESETS:
        raise UserError(f"unknown preset {layered.preset!r}; choose tiny, small or base")
    cfg = build_config(DistillConfig, DISTILL_PRESETS[key], teacher_defaults, file_shared, flag_shared,
                       where="distill")
    cfg.options = build_config(options_cls, options_cls.PRESETS.get(key, {}), file_opts, flag_opts, where="distill")
    return cfg


@locked("out")
def distill(cfg: DistillConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
            force: bool = False) -> list[Path]:
    """Distill cfg.teacher with cfg.method into run directory `out` (which must be empty or absent unless resume or
    force); returns the exported student folders."""
    if not (resume or force):
        check_empty(Path(out))
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.options is None:
        cfg.options = METHODS[cfg.method].options()
    return METHODS[cfg.method].run(DistillContext(cfg, out, resume, stop_at))


__all__ = ["METHODS", "DistillContext", "DistillMethod", "distill", "option_owners", "resolve_distill_config"]
