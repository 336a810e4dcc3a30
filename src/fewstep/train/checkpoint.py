"""Atomic checkpoints in safetensors: a run killed while saving keeps its previous checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fewstep.core.errors import UserError
from fewstep.core.files import first_line

LATEST = "latest"


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and a JSON-able remainder."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state_dict from optimizer_to_flat's two parts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1))


def save_checkpoint(ckpt_dir: Path, step: int, modules: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, dict[str, Any]], state: dict[str, Any], keep: int = 2) -> Path:
    """Write step-NNNNNNN/ under a temporary name, rename it into place, then move the `latest` pointer."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, sd in modules.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, tmp / f"{name}.safetensors")
        for name, opt_state in optimizers.items():
            tensors, meta = optimizer_to_flat(opt_state)
            save_file(tensors, tmp / f"optim-{name}.safetensors")
            _write_json(tmp / f"optim-{name}.json", meta)
        _write_json(tmp / "state.json", {"step": step, **state})
    except BaseException:  # e.g. a full disk: leave no half-written folder, keep the previous checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = ckpt_dir / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, ckpt_dir / LATEST)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path, before: int | None = None) -> Path | None:
    """The newest complete checkpoint (the `latest` pointer, else the highest step-* folder with a state.json);
    with `before`, the newest one of a step below it."""
    if before is not None:
        complete = [p for p in sorted(ckpt_dir.glob("step-*")) if (p / "state.json").exists()
                    and p.name[5:].isdigit() and int(p.name[5:]) < before]
        return complete[-1] if complete else None
    pointer = ckpt_dir / LATEST
    if pointer.exists():
        candidate = ckpt_dir / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    complete = [p for p in sorted(ckpt_dir.glob("step-*")) if (p / "state.json").exists()]
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]], dict[str, Any]]:
    """(step, module state_dicts, optimizer state_dicts, extra state) of one checkpoint folder."""
    try:
        state = json.loads((path / "state.json").read_text())
        modules = {p.stem: load_file(p) for p in path.glob("*.safetensors") if not p.name.startswith("optim-")}
        optims = {}
        for p in path.glob("optim-*.safetensors"):
            name = p.stem[len("optim-"):]
            optims[name] = optimizer_from_flat(load_file(p), json.loads((path / f"optim-{name}.json").read_text()))
        if not modules or not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no weights or no step")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({first_line(e)}); delete it to resume from an older "
                        "one") from None
    return int(state.pop("step")), modules, optims, state
