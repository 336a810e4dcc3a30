"""Distillation: one module per method over the shared training loop; `distill` runs one from a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from fewstep.config import DISTILL_PRESETS, DistillConfig, resolve_config
from fewstep.core.errors import UserError
from fewstep.distill import adversarial, consistency, dmd, progressive, reflow
from fewstep.distill.common import DistillContext

METHODS: dict[str, Callable[[DistillContext], list[Path]]] = {
    "progressive": progressive.run, "consistency": consistency.run, "reflow": reflow.run, "dmd2": dmd.run,
    "add": adversarial.run_add, "lightning": adversarial.run_lightning}


def _teacher_kind(cfg: DistillConfig) -> str:
    from fewstep.models.io import FEWSTEP_JSON, resolve_model_dir

    if not cfg.teacher:
        raise UserError("--teacher is required: a run directory, fewstep model folder or diffusers folder")
    info = resolve_model_dir(cfg.teacher) / FEWSTEP_JSON
    return json.loads(info.read_text()).get("kind", "image") if info.exists() else "image"


def resolve_distill_config(overrides: dict, config_file: str | None = None, out: str | Path | None = None,
                           resume: bool = False) -> DistillConfig:
    """defaults < preset (by the teacher's data kind) < config file < flags; a resumed run keeps its config.toml."""
    return resolve_config(DistillConfig, DISTILL_PRESETS, _teacher_kind, overrides, config_file, out, resume)


def distill(cfg: DistillConfig, out: str | Path, resume: bool = False, stop_at: int | None = None) -> list[Path]:
    """Distill cfg.teacher with cfg.method into run directory `out`; returns the exported student folders."""
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose {', '.join(METHODS)}")
    return METHODS[cfg.method](DistillContext(cfg, out, resume, stop_at))


__all__ = ["METHODS", "DistillContext", "distill", "resolve_distill_config"]
