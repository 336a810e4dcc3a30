"""Decode any image PIL reads into [channels, R, R] float32 in [-1, 1]: every mode and bit depth, squashed or
centre-cropped to a square, transparency composited over white."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fewstep.core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # PIL opens 16-bit greyscale as I;16 (older: I)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, PIL's RGB -> L weights


def _unit_array(im) -> np.ndarray:
    """[H, W, 3 or 4] float32 in [0, 1]: 8-bit modes by PIL's own conversions, 16-bit divided by 65535."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(im).astype(np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    if im.mode == "F":
        grey = np.asarray(im, np.float32)
        if not np.isfinite(grey).all():
            raise ValueError("NaN or infinite pixel values")
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    alpha = im.mode in ALPHA_MODES or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if alpha else "RGB"), np.float32) / 255.0


def _square(a: torch.Tensor, resolution: int, center_crop: bool) -> torch.Tensor:
    """[C, H, W] -> [C, R, R]: antialiased bicubic (as PIL's), on the whole image or its centred square."""
    _, h, w = a.shape
    if center_crop:
        side = min(h, w)
        top, left = int(round((h - side) / 2)), int(round((w - side) / 2))  # torchvision's CenterCrop offsets
        a = a[:, top:top + side, left:left + side]
    if a.shape[1:] == (resolution, resolution):
        return a
    return F.interpolate(a[None], (resolution, resolution), mode="bicubic", antialias=True)[0].clamp(0, 1)


@contextmanager
def _opened(source: str | Path | bytes, name: str) -> Iterator:
    """A PIL image of a file or bytes; anything PIL cannot read is a UserError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            yield im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{name or source}: not a readable image ({type(e).__name__}); remove or replace it") from None


def image_size(source: str | Path | bytes, name: str = "") -> tuple[int, int]:
    """(width, height) of an image, from its header."""
    with _opened(source, name) as im:
        return im.size


def decode_image(source: str | Path | bytes, resolution: int, center_crop: bool = False, channels: int = 3,
                 name: str = "") -> torch.Tensor:
    """An image file or its bytes as [channels, resolution, resolution] float32 in [-1, 1]."""
    from PIL import ImageOps

    with _opened(source, name) as im:
        im.load()
        a = _unit_array(ImageOps.exif_transpose(im))
    if a.shape[2] == 4:  # straight alpha over a white background: c * alpha + 1 * (1 - alpha)
        a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
    if channels == 1:
        a = a @ LUMA[:, None]
    elif channels != 3:
        raise UserError(f"channels={channels} is not supported; use 3 (RGB) or 1 (greyscale)")
    x = _square(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), resolution, center_crop)
    return x * 2 - 1
