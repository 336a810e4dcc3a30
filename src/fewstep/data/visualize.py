"""Pictures of samples: a PNG grid for images, a scatter plot for 2-D points, a curve for a metric log."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 HxWx3 grid, nrow images per row."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    if c == 1:
        x = x.expand(n, 3, h, w)
    grid = torch.full((3, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 0) -> Path:
    """Write a PNG grid; small images are upscaled (nearest) so an 8x8 digit is visible."""
    from PIL import Image

    grid = Image.fromarray(image_grid(images, nrow))
    factor = upscale or max(1, 256 // max(images.shape[-1] * (nrow or math.ceil(math.sqrt(len(images)))), 1))
    grid = grid.resize((grid.width * factor, grid.height * factor), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_prompt_grid(images: torch.Tensor, prompts: list[str], path: str | Path, cell: int = 64) -> Path:
    """Write a PNG with one row per distinct prompt (its samples, in order), the prompt written above its row."""
    from PIL import Image, ImageDraw

    if len(prompts) != len(images):
        raise ValueError(f"one prompt per image, got {len(prompts)} prompts for {len(images)} images")
    order = list(dict.fromkeys(prompts))
    rows = [[i for i, p in enumerate(prompts) if p == prompt] for prompt in order]
    ncol, pad, band = max(len(r) for r in rows), 2, 14
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().expand(-1, 3, -1, -1)
    width = max(pad + ncol * (cell + pad), pad + 6 * max(len(p) for p in order))  # the default font: 6 px a letter
    canvas = Image.new("RGB", (width, len(rows) * (band + cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, members) in enumerate(zip(order, rows)):
        top = pad + r * (band + cell + pad)
        draw.text((pad, top), prompt, fill="black")
        for c, i in enumerate(members):
            tile = Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (pad + c * (cell + pad), top + band))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_scatter(points: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "") -> Path:
    """Scatter 2-D samples (blue) over reference data (grey) and write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(*reference[:, :2].T.numpy(), s=2, c="0.75", label="data")
    ax.scatter(*points[:, :2].float().T.numpy(), s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_samples(samples: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = "") -> Path:
    """A grid for images, a scatter plot for vectors."""
    if samples.ndim == 4:
        return save_image_grid(samples, path)
    return save_scatter(samples, path, reference, title)


def save_curve(steps: list[int], values: list[float], path: str | Path, ylabel: str = "loss", title: str = "") -> Path:
    """A log-scale line plot of a metric against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
