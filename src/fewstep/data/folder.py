"""A user's image folder in the conventions people use: Hugging Face imagefolder metadata (metadata.jsonl or
metadata.csv with `file_name` and a caption column), `.txt` caption sidecars, and class sub-folders as labels."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from fewstep.core.errors import UserError
from fewstep.data.images import IMAGE_SUFFIXES
from fewstep.data.items import ImageItems, index_labels, require_all_captions
from fewstep.data.spec import DataSpec, data_files

METADATA = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption", "prompt")  # looked for in this order unless caption_column names one


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents (a UserError when it is not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None


def _metadata_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        return list(csv.DictReader(read_text(path).splitlines()))
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError):
                raise UserError(f"{path}:{n}: not a JSON object; metadata.jsonl holds one object per line") from None
    return rows


def caption_column(columns: list[str], wanted: str, where: object) -> str:
    """The caption column: `wanted` if set, else the first of text, caption, prompt; a UserError when absent."""
    column = wanted or next((c for c in CAPTION_COLUMNS if c in columns), "")
    if column not in columns:
        looked_for = repr(wanted) if wanted else " / ".join(CAPTION_COLUMNS)
        raise UserError(f"{where} has no caption column {looked_for} (it has {', '.join(columns) or 'none'}); name "
                        "yours with ?caption_column=NAME")
    return column


def metadata_captions(files: list[Path], wanted_column: str) -> dict[Path, str]:
    """Captions by image path from every metadata file (file_name is relative to the metadata file's folder)."""
    captions: dict[Path, str] = {}
    for meta in (f for f in files if f.name in METADATA):
        rows = _metadata_rows(meta)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        if "file_name" not in columns:
            raise UserError(f"{meta} has no file_name column; imagefolder metadata names each image in file_name")
        column = caption_column(columns, wanted_column, meta)
        for row in rows:
            image = Path(os.path.normpath(meta.parent / str(row["file_name"])))
            if not image.is_file():
                raise UserError(f"{meta}: file_name {row['file_name']!r} does not exist; fix the row or add the file")
            if row.get(column) is not None:
                captions[image] = str(row[column])
    return captions


class FolderItems(ImageItems):
    """Every image under a folder, in sorted path order, with its caption and class (first sub-folder) if any."""

    def __init__(self, spec: DataSpec):
        root = Path(spec.path)
        if not root.is_dir():
            raise UserError(f"image folder {root} does not exist or is not a directory")
        everything = data_files(root)
        files = [p for p in everything if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"image folder {root} holds no images ({' '.join(sorted(IMAGE_SUFFIXES))})")
        from_metadata = metadata_captions(everything, spec.option("caption_column"))
        sidecars = {p for p in everything if p.suffix == ".txt"}
        captions = [from_metadata.get(p, read_text(p.with_suffix(".txt")).strip() if p.with_suffix(".txt") in sidecars
                                      else None) for p in files]
        relative = [p.relative_to(root) for p in files]
        self.has_text = require_all_captions(captions, [str(r) for r in relative])
        self.captions = captions if self.has_text else None
        folders = [r.parts[0] if len(r.parts) > 1 else None for r in relative]
        labelled = None not in folders and len(set(folders)) > 1  # class sub-folders: every image in one, two or more
        self.labels, self.classes = index_labels(folders) if labelled else (None, [])
        self.files = [str(p) for p in files]
        self.decode_as(spec)

    def __len__(self) -> int:
        return len(self.files)

    def source(self, i: int) -> str:
        return self.files[i]

    def name(self, i: int) -> str:
        return self.files[i]

