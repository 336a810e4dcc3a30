"""Built-in, offline datasets: digits, 2-D toy sets, procedural shapes, captioned scenes, and folder:PATH."""

from __future__ import annotations

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.data.toy2d import TOY_SETS

DATASETS = ("digits", *TOY_SETS, "shapes", "captions", "folder:PATH")


def load_dataset(spec: str, resolution: int | None = None) -> Dataset:
    """Load a dataset by name: digits, 8gaussians, checkerboard, moons, swissroll, shapes, captions, folder:PATH."""
    if spec == "digits":
        from fewstep.data.digits import load_digits
        return load_digits()
    if spec in TOY_SETS:
        from fewstep.data.toy2d import load_toy
        return load_toy(spec)
    if spec == "shapes":
        from fewstep.data.shapes import load_shapes
        return load_shapes(resolution or 32)
    if spec == "captions":
        from fewstep.data.captions import load_captions
        return load_captions(resolution or 32)
    if spec.startswith("folder:"):
        from fewstep.data.folder import load_folder
        return load_folder(spec[len("folder:"):], resolution or 32)
    raise UserError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "Dataset", "load_dataset"]
