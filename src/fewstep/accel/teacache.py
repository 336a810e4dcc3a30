"""TeaCache-style caching for any transformer fewstep loads: skip the whole block stack while the timestep-modulated
input of the first block has changed little since the last full call.

Per call, the first block's AdaLN-modulated normed input m is read (cheap: one norm and the modulation, before any
block runs). Its relative L1 change from the previous call, x = |m - m_prev|_1 / |m_prev|_1, is rescaled by a
polynomial p(x), an estimate of how much the stack's output changed, and accumulated. While the accumulated value
stays below `threshold`, the call reuses the stack's residual of the last full call (blockcache.py, head = 0);
when it reaches the threshold the call runs in full and the sum restarts at 0. The first call is always full.

The polynomial is fitted offline by `calibrate`: one uncached sampler run on held-out seeds records, per sample and
per pair of consecutive calls, x and the relative L1 change y of the stack's residual; p is the least-squares
polynomial y ~ p(x) of degree at most 4 (TeaCache's), the degree chosen by how well a fit on half the samples
predicts the other half (a high degree on a narrow range of x extrapolates wildly). Uncalibrated, p(x) = x.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from fewstep.accel.blockcache import BlockCacheHandle, check_warmup
from fewstep.accel.blocks import Block, BlockStack, block_stack
from fewstep.core.errors import UserError
from fewstep.samplers import generate


def _argument(block: Block, name: str, args: tuple, kwargs: dict) -> Any:
    """The value of parameter `name` in one call of a block (None when left at its default)."""
    forward = type(block.module).forward  # the class's: the instance's is the cache's wrapper
    return inspect.signature(forward).bind_partial(block.module, *args, **kwargs).arguments.get(name)


def modulated_input(block: Block, args: tuple, kwargs: dict) -> torch.Tensor:
    """The first block's AdaLN-modulated normed image tokens, norm1(h) * (1 + scale) + shift, on this call."""
    from diffusers.models.normalization import AdaLayerNormZero

    module, h = block.module, block.read(args, kwargs)[0]
    norm = getattr(module, "norm1", None)
    if isinstance(norm, AdaLayerNormZero):  # SD3 and Flux take the embedding; DiT's block embeds timestep and class
        if norm.emb is None:
            return norm(h, emb=_argument(block, "temb", args, kwargs))[0]
        return norm(h, _argument(block, "timestep", args, kwargs), _argument(block, "class_labels", args, kwargs),
                    hidden_dtype=h.dtype)[0]
    if getattr(module, "norm_type", None) == "ada_norm_single":  # PixArt: the shared table plus the embedded timestep
        t = _argument(block, "timestep", args, kwargs)
        shift, scale = (module.scale_shift_table[None] + t.reshape(h.shape[0], 6, -1)).chunk(6, dim=1)[:2]
        return norm(h) * (1 + scale) + shift
    raise UserError(f"teacache cannot read the timestep-modulated input of a {type(module).__name__} "
                    "(it reads AdaLayerNormZero and PixArt's ada_norm_single blocks)")


def relative_l1(now: torch.Tensor, before: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """|now - before|_1 / |before|_1 (over `dims`, default all)."""
    dims = dims or tuple(range(now.dim()))
    return (now - before).abs().mean(dims) / before.abs().mean(dims).clamp_min(1e-12)


@dataclass
class TeaCacheConfig:
    """Skip the stack while the accumulated rescaled change of the modulated input stays below `threshold`."""

    threshold: float = 0.1
    coefficients: list[float] = field(default_factory=lambda: [1.0, 0.0])  # p, highest power first; fit: calibrate
    calibrate: bool = False  # fit the coefficients (fewstep accelerate only)
    warmup: int = 1  # the first calls of a trajectory, always run in full (TeaCache's ret_steps)

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise UserError(f"teacache: threshold must be >= 0 (0 = never skip), got {self.threshold}")
        check_warmup("teacache", self.warmup)
        if not self.coefficients:
            raise UserError("teacache: coefficients takes a polynomial, highest power first, like [1,0]")


class TeaCacheHandle(BlockCacheHandle):
    """Serves a call from the stack residual of the last full call while sum p(x) < threshold (module docstring)."""

    name = "teacache"

    def __init__(self, stack: BlockStack, config: TeaCacheConfig):
        super().__init__(stack, head=0)
        self.threshold, self.warmup = config.threshold, config.warmup
        self.rescale = np.poly1d(config.coefficients)
        self.previous: torch.Tensor | None = None  # the modulated input of the previous call
        self.accumulated = 0.0

    def reuse_scale(self) -> float | None:
        m = modulated_input(*self.head_call)
        previous, self.previous = self.previous, m
        if previous is None or self.call_index <= self.warmup:
            self.accumulated = 0.0
            return None
        self.accumulated += max(0.0, float(self.rescale(float(relative_l1(m, previous)))))
        if self.accumulated < self.threshold:
            return 1.0
        self.accumulated = 0.0
        return None

    def clear(self) -> None:
        super().clear()
        self.previous, self.accumulated = None, 0.0


class ChangeRecorder(BlockCacheHandle):
    """Runs every call in full and keeps, per sample, the modulated input's and the stack residual's change."""

    name = "teacache calibration"

    def __init__(self, stack: BlockStack):
        super().__init__(stack, head=0)
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._m: torch.Tensor | None = None
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def reuse_scale(self) -> float | None:
        self._m = modulated_input(*self.head_call)
        return None

    def after_full(self) -> None:
        r = self.residual[0]
        if self._previous is not None:
            dims = tuple(range(1, r.dim()))
            self.inputs.append(relative_l1(self._m, self._previous[0], dims).double().cpu())
            self.outputs.append(relative_l1(r, self._previous[1], dims).double().cpu())
        self._previous = (self._m, r)

    def clear(self) -> None:
        super().clear()
        self._previous = None


def fit_polynomial(x: np.ndarray, y: np.ndarray, max_degree: int = 4) -> list[float]:
    """Least-squares y ~ p(x) over the rows (samples) of x and y, its degree (1..max_degree) the one that predicts
    the held-out half of the samples best; highest power first."""
    if len(x) < 2:
        return [float(c) for c in np.polyfit(x.ravel(), y.ravel(), 1)]
    fit, held = slice(0, None, 2), slice(1, None, 2)

    def held_out_error(degree: int) -> float:
        c = np.polyfit(x[fit].ravel(), y[fit].ravel(), degree)
        return float(np.mean((np.polyval(c, x[held].ravel()) - y[held].ravel()) ** 2))

    degree = min(range(1, max_degree + 1), key=held_out_error)
    return [float(c) for c in np.polyfit(x.ravel(), y.ravel(), degree)]


def calibrate(denoiser: Any, shape: Sequence[int], sigmas: torch.Tensor, sampler: str = "heun", n: int = 8,
              seed: int = 1000, labels: Any = None, max_degree: int = 4, device: str = "cpu") -> list[float]:
    """Fit TeaCache's polynomial on one uncached run of samples 0..n-1 of the held-out `seed`; highest power first."""
    recorder = ChangeRecorder(block_stack(denoiser, "teacache"))
    try:
        generate(denoiser, shape, n, sigmas, sampler, seed, labels, batch_size=n, device=device)
    finally:
        recorder.remove()
    if not recorder.inputs:
        raise UserError("teacache: calibration needs a sampler run of at least 2 network calls")
    x, y = torch.stack(recorder.inputs, 1).numpy(), torch.stack(recorder.outputs, 1).numpy()  # [samples, calls]
    return fit_polynomial(x, y, max_degree)


def apply_teacache(model: Any, config: TeaCacheConfig) -> TeaCacheHandle:
    """Apply the TeaCache-style cache to the transformer inside `model`."""
    if config.calibrate:
        raise UserError("teacache: calibrate=true fits the coefficients once, offline: run fewstep accelerate --cache "
                        "teacache:threshold=T,calibrate=true (or fewstep.accel.teacache.calibrate) and use the result")
    return TeaCacheHandle(block_stack(model, "teacache"), config)
