"""A user's folder of images (optionally one sub-folder per class), resized to a square resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FRACTION = 0.1


def _read(path: Path, resolution: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
            return np.asarray(im, np.float32).transpose(2, 0, 1) / 127.5 - 1
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__}); remove or replace this file") from None


def load_folder(root: str | Path, resolution: int = 32) -> Dataset:
    """Every file under root is an image; sub-folders of root, if any hold images, name the classes."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"image folder {root} holds no files")
    class_names = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(class_names) and all(p.parent != root for p in files)
    images = np.stack([_read(p, resolution) for p in files])
    labels = torch.tensor([class_names.index(p.relative_to(root).parts[0]) for p in files]) if labelled else None
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    n_test = max(1, int(len(files) * TEST_FRACTION)) if len(files) > 1 else 0
    x = torch.from_numpy(images)[order]
    y = labels[order] if labels is not None else None
    test_idx, train_idx = slice(0, n_test), slice(n_test, None)
    return Dataset(f"folder:{root}", "image", x[train_idx], x[test_idx] if n_test else x[:1],
                   y[train_idx] if y is not None else None, (y[test_idx] if n_test else y[:1]) if y is not None else None,
                   num_classes=len(class_names) if labelled else 0,
                   meta={"resolution": resolution, "classes": class_names if labelled else []})
