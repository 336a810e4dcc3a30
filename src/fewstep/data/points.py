"""Vectors from a file: .npy, .npz, .csv or .safetensors holding an N x D array, optional labels and mode centres,
with a seeded held-out split that the ruler uses as its reference."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.data.folder import read_text
from fewstep.data.items import index_labels, split_indices
from fewstep.data.spec import DataSpec

DATA_KEYS = ("x", "data", "points")
LABEL_KEYS = ("labels", "label", "y", "class")
CENTRE_KEYS = ("centres", "centers")
SUFFIXES = (".npy", ".npz", ".csv", ".safetensors")


def _number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _label_values(values: list) -> list:
    """Labels as ints where they are integral numbers (so 2 sorts before 10), else as given."""
    if all(_number(str(v)) and float(v) == int(float(v)) for v in values):
        return [int(float(v)) for v in values]
    return [str(v) for v in values]


def read_csv(path: Path, label_column: str) -> dict[str, np.ndarray | list]:
    """Columns of numbers (an optional header row names them) and an optional label column."""
    rows = [(n, row) for n, row in enumerate(csv.reader(read_text(path).splitlines()), 1) if row]
    if not rows:
        raise UserError(f"{path} is empty; write one point per line, its coordinates separated by commas")
    header = rows[0][1] if not all(_number(v) for v in rows[0][1]) else None
    body = rows[1:] if header else rows
    width = len(header or body[0][1]) if body else 0
    if not body:
        raise UserError(f"{path} holds a header but no points")
    for n, row in body:
        if len(row) != width:
            raise UserError(f"{path}:{n}: {len(row)} values where the first row has {width}; every row needs {width}")
    names = [h.strip() for h in header] if header else [str(i) for i in range(width)]
    wanted = label_column or next((k for k in LABEL_KEYS if k in names), "")
    if wanted and wanted not in names:
        raise UserError(f"{path} has no label column {wanted!r} (columns: {', '.join(names)})")
    label = names.index(wanted) if wanted else None
    values = np.empty((len(body), width - (label is not None)), np.float64)
    for r, (n, row) in enumerate(body):
        numbers = [v for c, v in enumerate(row) if c != label]
        for c, v in enumerate(numbers):
            try:
                values[r, c] = float(v)
            except ValueError:
                raise UserError(f"{path}:{n}: {v!r} is not a number") from None
    out: dict[str, np.ndarray | list] = {"x": values}
    if label is not None:
        out["labels"] = [row[label].strip() for _, row in body]
    return out


def read_arrays(path: Path, label_column: str) -> dict[str, np.ndarray | list]:
    """The arrays of a points file by name: x (the points), labels and centres when present."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: points files are {', '.join(SUFFIXES)}")
    if suffix == ".csv":
        return read_csv(path, label_column)
    try:
        if suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
    except Exception as e:  # numpy and safetensors raise many types for a damaged file
        raise UserError(f"{path}: not a readable {suffix} file ({type(e).__name__}: {e})".split("\n")[0]) from None
    labels = label_column or next((k for k in LABEL_KEYS if k in arrays), "")
    if labels and labels not in arrays:
        raise UserError(f"{path} has no label array {labels!r} (arrays: {', '.join(arrays)})")
    data = [k for k in arrays if k not in (labels, *CENTRE_KEYS)]
    key = next((k for k in DATA_KEYS if k in arrays), data[0] if len(data) == 1 else "")
    if not key:
        raise UserError(f"{path} holds arrays {', '.join(arrays)}; name the points array x")
    out = {"x": arrays[key]}
    if labels:
        out["labels"] = list(arrays[labels].reshape(-1))
    centres = next((k for k in CENTRE_KEYS if k in arrays), "")
    if centres:
        out["centres"] = arrays[centres]
    return out


def _as_points(a: np.ndarray, path: Path, what: str) -> torch.Tensor:
    if a.dtype.kind not in "fiub":
        raise UserError(f"{path}: the {what} array holds {a.dtype} values; store numbers")
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    if a.ndim != 2 or a.size == 0:
        raise UserError(f"{path}: the {what} array has shape {tuple(a.shape)}; points are an N x D array")
    bad = ~np.isfinite(a.astype(np.float64)).all(1)
    if bad.any():
        raise UserError(f"{path}: {int(bad.sum())} {what} rows hold NaN or infinite values (first: row "
                        f"{int(bad.argmax())}); drop or fill them")
    return torch.from_numpy(a.astype(np.float32))


def load_points(spec: DataSpec) -> Dataset:
    """A points file as a vector Dataset, split into train and held-out points by the spec's seed."""
    path = Path(spec.path)
    arrays = read_arrays(path, spec.option("label_column"))
    x = _as_points(np.asarray(arrays["x"]), path, "points")
    if len(x) < 2:
        raise UserError(f"{path} holds {len(x)} point; training and its held-out reference need at least 2")
    labels, classes = index_labels(_label_values(arrays["labels"])) if "labels" in arrays else (None, [])
    if labels is not None and len(labels) != len(x):
        raise UserError(f"{path}: {len(labels)} labels for {len(x)} points; give one label per point")
    centres = _as_points(np.asarray(arrays["centres"]), path, "centres") if "centres" in arrays else None
    if centres is not None and centres.shape[1] != x.shape[1]:
        raise UserError(f"{path}: centres have {centres.shape[1]} coordinates, the points {x.shape[1]}")
    train, test = split_indices(len(x), *(spec.option(k) for k in ("test_fraction", "split_seed", "max_test")))
    y = torch.from_numpy(labels) if labels is not None else None
    return Dataset(str(spec), "vector", x[train], x[test], y[train] if y is not None else None,
                   y[test] if y is not None else None, num_classes=len(classes), centres=centres, spec=spec,
                   meta={"classes": classes})
