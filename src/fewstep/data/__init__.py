"""Datasets: built-in offline sets (digits, 2-D toy sets, shapes, captions) and a user's data by spec (docs/data.md)."""

from __future__ import annotations

from typing import Any

from fewstep.data.base import Dataset
from fewstep.data.prompts import read_prompts
from fewstep.data.sources import load, probe
from fewstep.data.spec import BUILTIN, KINDS, DataSpec, parse_spec, recorded_spec, verify_spec
from fewstep.data.stream import batch_source
from fewstep.data.tensors import dataset_from_tensors, dataset_from_torch

DATASETS = (*BUILTIN, *(f"{kind}:PATH" for kind in KINDS if kind != "prompts"))


def load_recorded(record: dict[str, Any] | None, name: str, override: str | None = None,
                  resolution: int | None = None) -> Dataset | None:
    """The data a saved model records (its verified DataSpec record, else its dataset name), or `override` with the
    recorded options; None when the model records none and nothing overrides it. A moved or changed file is a
    one-line UserError."""
    if record or name:
        return load(recorded_spec(record or name, override, resolution=resolution))
    return load(parse_spec(override, resolution=resolution)) if override else None


def load_dataset(spec: str | DataSpec, resolution: int | None = None, **options: Any) -> Dataset:
    """Load a built-in set by name, or a user's data by spec (`points:FILE`, `folder:DIR?resolution=64`, ...)."""
    return load(spec if isinstance(spec, DataSpec) else parse_spec(spec, resolution=resolution, **options))


__all__ = ["DATASETS", "DataSpec", "Dataset", "batch_source", "dataset_from_tensors", "dataset_from_torch",
           "load_dataset", "load_recorded", "parse_spec", "probe", "read_prompts", "recorded_spec", "verify_spec"]
