"""From a dataset spec to its data: the loader of each kind, and the kind and item shape for presets."""

from __future__ import annotations

from pathlib import Path

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.data.folder import FolderItems
from fewstep.data.hf import HFItems
from fewstep.data.items import ImageItems, items_dataset
from fewstep.data.points import load_points, read_arrays
from fewstep.data.shards import ShardItems
from fewstep.data.spec import SIZED_BUILTIN, DataSpec


def _builtin(spec: DataSpec) -> Dataset:
    name = spec.path
    if name == "digits":
        from fewstep.data.digits import load_digits
        return load_digits()
    if name == "shapes":
        from fewstep.data.shapes import load_shapes
        return load_shapes(spec.option("resolution"))
    if name == "captions":
        from fewstep.data.captions import load_captions
        return load_captions(spec.option("resolution"))
    from fewstep.data.toy2d import load_toy
    return load_toy(name)


IMAGE_ITEMS = {"folder": FolderItems, "hf": HFItems, "shards": ShardItems}


def open_items(spec: DataSpec) -> ImageItems:
    """The items of an image spec (folder, hf, shards), read on demand."""
    return IMAGE_ITEMS[spec.kind](spec)


def load(spec: DataSpec) -> Dataset:
    """The Dataset a spec names (image sets read into memory, or streamed when the spec says stream=true)."""
    if spec.kind == "builtin":
        data = _builtin(spec)
    elif spec.kind == "points":
        data = load_points(spec)
    elif spec.kind in IMAGE_ITEMS:
        data = items_dataset(spec, open_items(spec))
    else:
        raise UserError(f"{spec} is not a training dataset; prompts: files go to --prompts")
    data.spec = data.spec or spec
    return data


def probe(spec: DataSpec) -> tuple[str, tuple[int, ...]]:
    """The kind ("image" or "vector") and item shape of a spec's data, reading as little of it as possible."""
    if spec.kind == "builtin":
        if spec.path == "digits":
            return "image", (1, 8, 8)
        if spec.path in SIZED_BUILTIN:
            return "image", (3, spec.option("resolution"), spec.option("resolution"))
        return "vector", (2,)
    if spec.kind == "points":
        x = read_arrays(Path(spec.path), spec.option("label_column"))["x"]
        return "vector", (1 if x.ndim == 1 else x.shape[1],)
    if spec.kind in IMAGE_ITEMS:
        return "image", open_items(spec).shape
    raise UserError(f"{spec} is not a training dataset; prompts: files go to --prompts")

