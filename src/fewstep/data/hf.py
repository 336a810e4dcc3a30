"""Hugging Face datasets on disk: a `save_to_disk` folder, or .parquet / .arrow files, with an image column and, if
present, a caption and a label column; read through `datasets` (memory-mapped Arrow, one row at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewstep.core.errors import UserError
from fewstep.data.folder import CAPTION_COLUMNS, caption_column
from fewstep.data.items import ImageItems, index_labels
from fewstep.data.spec import DataSpec, data_files

IMAGE_COLUMNS = ("image", "img", "jpg", "png")  # looked for when no column has the datasets Image feature


def require_datasets() -> Any:
    """The `datasets` module, or a one-line UserError naming the pip extra."""
    try:
        import datasets
    except ImportError:
        raise UserError("hf: data needs the datasets package; pip install 'fewstep[data]'") from None
    return datasets


def open_hf(path: Path, split: str) -> Any:
    """A datasets.Dataset from a save_to_disk folder (one split of a DatasetDict) or from .parquet / .arrow files."""
    ds_lib = require_datasets()
    if path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
        ds = ds_lib.load_from_disk(str(path))
    else:
        files = [f for f in data_files(path) if f.suffix in (".parquet", ".arrow")]
        if not files or len({f.suffix for f in files}) > 1:
            raise UserError(f"{path} holds no save_to_disk dataset and not only .parquet or only .arrow files")
        try:
            ds = (ds_lib.Dataset.from_parquet([str(f) for f in files]) if files[0].suffix == ".parquet" else
                  ds_lib.concatenate_datasets([ds_lib.Dataset.from_file(str(f)) for f in files]))
        except Exception as e:  # pyarrow's many error types for a file that is not what its suffix says
            raise UserError(f"{path}: not readable as {files[0].suffix} ({type(e).__name__}: {e})".split("\n")[0]) \
                from None
    if isinstance(ds, ds_lib.DatasetDict):
        if split not in ds:
            raise UserError(f"{path} has no split {split!r}; choose one of {', '.join(ds)} with ?split=NAME")
        ds = ds[split]
    return ds


class HFItems(ImageItems):
    """Rows of a datasets.Dataset: image (Image feature, bytes or a path), caption and label columns."""

    def __init__(self, spec: DataSpec):
        ds_lib = require_datasets()
        ds = open_hf(Path(spec.path), spec.option("split"))
        columns, features = list(ds.column_names), ds.features
        typed = [c for c in columns if isinstance(features[c], ds_lib.Image)]
        image = spec.option("image_column") or next(iter(typed + [c for c in IMAGE_COLUMNS if c in columns]), "")
        if image not in columns:
            raise UserError(f"{spec.path} has no image column {image or ' / '.join(IMAGE_COLUMNS)} (it has "
                            f"{', '.join(columns)}); name it with ?image_column=NAME")
        wanted_text = spec.option("caption_column")
        text = caption_column(columns, wanted_text, spec.path) if wanted_text or set(CAPTION_COLUMNS) & set(columns) \
            else ""
        label = spec.option("label_column") or ("label" if "label" in columns else "")
        if label and label not in columns:
            raise UserError(f"{spec.path} has no label column {label!r} (it has {', '.join(columns)})")
        if text and ds.data.column(text).null_count:
            raise UserError(f"{ds.data.column(text).null_count} of {len(ds)} rows of {spec.path} have no caption in "
                            f"column {text!r}; caption every row or none")
        if isinstance(features[image], ds_lib.Image):
            ds = ds.cast_column(image, ds_lib.Image(decode=False))  # fewstep decodes every mode and bit depth itself
        self.labels, self.classes = None, []
        if label:
            class_label = isinstance(features[label], ds_lib.ClassLabel)
            values = ds.data.column(label).to_pylist()
            self.labels, self.classes = (np.asarray(values, np.int64), features[label].names) if class_label \
                else index_labels(values)
        self.ds = ds.select_columns([c for c in (image, text) if c])
        self.image_column, self.text_column, self.has_text = image, text, bool(text)
        self.root = Path(spec.path) if Path(spec.path).is_dir() else Path(spec.path).parent
        self.decode_as(spec)

    def __len__(self) -> int:
        return len(self.ds)

    def source(self, i: int) -> str | bytes:
        value = self.ds[int(i)][self.image_column]
        if isinstance(value, dict):  # the Image feature undecoded: {"bytes": ..., "path": ...}
            value = value["bytes"] if value.get("bytes") is not None else value["path"]
        return value if isinstance(value, bytes) else str(self.root / value)

    def name(self, i: int) -> str:
        return f"{self.root} row {i}"

    def caption(self, i: int) -> str:
        return self.ds[int(i)][self.text_column] if self.has_text else ""

