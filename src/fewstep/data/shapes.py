"""Procedural coloured shapes (circle, square, triangle) at any resolution, labelled by shape."""

from __future__ import annotations

import numpy as np
import torch

from fewstep.data.base import Dataset

CLASSES = ("circle", "square", "triangle")
SUPERSAMPLE = 4


def _render(kind: int, cx: float, cy: float, r: float, res: int) -> np.ndarray:
    """Anti-aliased coverage mask of one shape on a res x res canvas (coordinates in [0, 1])."""
    n = res * SUPERSAMPLE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    xx, yy = (xx + 0.5) / n, (yy + 0.5) / n
    if kind == 0:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    elif kind == 1:
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    else:  # upward triangle inscribed in the circle of radius r
        top, base = cy - r, cy + r * 0.5
        half = (yy - top) / (base - top) * r * 0.866
        mask = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
    return mask.reshape(res, SUPERSAMPLE, res, SUPERSAMPLE).mean((1, 3))


def make_shapes(n: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n RGB images in [-1, 1] of one random shape, colour, size and position on a dark background."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, resolution, resolution), np.float32)
    labels = rng.integers(0, len(CLASSES), n)
    for i in range(n):
        r = rng.uniform(0.18, 0.32)
        cx, cy = rng.uniform(r, 1 - r, 2)
        colour = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        background = rng.uniform(0.0, 0.15, 3).astype(np.float32)
        mask = _render(int(labels[i]), cx, cy, r, resolution)[None]
        images[i] = mask * colour[:, None, None] + (1 - mask) * background[:, None, None]
    return torch.from_numpy(images * 2 - 1), torch.from_numpy(labels).long()


def load_shapes(resolution: int = 32, n_train: int = 4000, n_test: int = 1000) -> Dataset:
    """The procedural shapes set; the same seed always gives the same images."""
    x_tr, y_tr = make_shapes(n_train, resolution, seed=1)
    x_te, y_te = make_shapes(n_test, resolution, seed=2)
    return Dataset(f"shapes{resolution}", "image", x_tr, x_te, y_tr, y_te, num_classes=len(CLASSES),
                   meta={"resolution": resolution})
