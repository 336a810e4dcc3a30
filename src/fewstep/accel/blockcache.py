"""Block-residual caches for a diffusers DiTTransformer2DModel, and the first-block cache (FBCache / TeaCache style).

A DiT's blocks map tokens h_0 -> h_L. After the first `head` blocks (h_head), the rest add the residual
R = h_L - h_head. A cached call runs the head only and returns h_head + scale * R_j, R_j kept from the last full
call j; the remaining blocks do not run. What decides (a threshold, an offline profile) is the subclass's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from fewstep.accel.base import AcceleratorHandle, find_network, unwrap_forward, wrap_forward
from fewstep.core.errors import UserError


def dit_of(target: Any, accelerator: str) -> nn.Module:
    """The DiTTransformer2DModel inside target."""
    from diffusers import DiTTransformer2DModel

    return find_network(target, DiTTransformer2DModel, accelerator)


class BlockCacheHandle(AcceleratorHandle):
    """Wraps each transformer block's forward; `reuse_scale` decides per call whether to skip the tail blocks."""

    name = "block cache"

    def __init__(self, dit: nn.Module, head: int):
        super().__init__()
        self.blocks = list(dit.transformer_blocks)
        if not 0 <= head < len(self.blocks):
            raise UserError(f"{self.name} needs more than {head} transformer blocks; this DiT has {len(self.blocks)}")
        self.head = head
        self.residual: torch.Tensor | None = None  # R_j of the last full call j
        self._head_in, self._head_out, self._reusing = None, None, False
        for i, block in enumerate(self.blocks):
            wrap_forward(block, partial(self._block_forward, i, type(block).forward.__get__(block)), self.name)

    def _block_forward(self, i: int, original: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if i == 0:
            self.begin_call(hidden_states, kwargs["timestep"])
            self._head_in, self._reusing = hidden_states, False
        if i == self.head:
            self._head_out = hidden_states
            scale = self.reuse_scale()
            self._reusing = scale is not None and self.residual is not None
            if self._reusing:
                self.cached_calls += 1
                return hidden_states + scale * self.residual
            self.full_calls += 1
        if self._reusing:  # a tail block of a cached call: its work is already in the residual
            return hidden_states
        out = original(hidden_states, *args, **kwargs)
        if i == len(self.blocks) - 1:
            self.residual = out - self._head_out
            self.after_full()
        return out

    def head_residual(self) -> torch.Tensor:
        """h_head - h_0 of the current call (what the first-block cache compares between calls)."""
        return self._head_out - self._head_in

    def reuse_scale(self) -> float | None:
        """None to run the tail blocks on this call, else the factor on the kept residual (if there is one yet)."""
        raise NotImplementedError

    def after_full(self) -> None:
        """Called after a full call has set self.residual."""

    def clear(self) -> None:
        self.residual, self._head_in, self._head_out, self._reusing = None, None, None, False

    def detach(self) -> None:
        for block in self.blocks:
            unwrap_forward(block)


@dataclass
class FirstBlockCacheConfig:
    """Skip the tail blocks while the first block's residual changed by less than `threshold` (relative L1)."""

    threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise UserError(f"fbcache: threshold must be >= 0 (0 = never skip), got {self.threshold}")


class FirstBlockCacheHandle(BlockCacheHandle):
    """First-block cache (ParaAttention's FBCache, as diffusers' FirstBlockCache hook): block 0 always runs; the tail
    is skipped when ||r - r_j||_1 / ||r_j||_1 < threshold, r the first block's residual now and r_j at the last full
    call j (so drift accumulates until a full call). threshold 0 never skips."""

    name = "fbcache"

    def __init__(self, dit: nn.Module, config: FirstBlockCacheConfig):
        super().__init__(dit, head=1)
        self.threshold = config.threshold
        self.full_head_residual: torch.Tensor | None = None

    def reuse_scale(self) -> float | None:
        r, r_full = self.head_residual(), self.full_head_residual
        if r_full is None:
            return None
        change = float((r - r_full).abs().mean() / r_full.abs().mean())
        return 1.0 if change < self.threshold else None

    def after_full(self) -> None:
        self.full_head_residual = self.head_residual()

    def clear(self) -> None:
        super().clear()
        self.full_head_residual = None


def apply_first_block_cache(model: Any, config: FirstBlockCacheConfig) -> FirstBlockCacheHandle:
    """Apply the first-block cache to the DiTTransformer2DModel inside `model`."""
    return FirstBlockCacheHandle(dit_of(model, "fbcache"), config)
