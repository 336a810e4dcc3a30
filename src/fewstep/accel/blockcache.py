"""Block-residual caches for any transformer fewstep loads, and the first-block cache (FBCache).

A transformer's blocks map a state s_0 -> s_L (image tokens, plus text tokens for joint blocks: blocks.py). After the
first `head` blocks (s_head), the rest add the residual R = s_L - s_head. A cached call runs the head only and
returns s_head + scale * R_j, R_j kept from the last full call j; the remaining blocks do not run. What decides (a
threshold, an offline profile) is the subclass's choice.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from fewstep.accel.base import AcceleratorHandle, unwrap_forward, wrap_forward
from fewstep.accel.blocks import Block, BlockStack, State, add, block_stack, residual
from fewstep.core.errors import UserError


class BlockCacheHandle(AcceleratorHandle):
    """Wraps each transformer block's forward; `reuse_scale` decides per call whether to skip the tail blocks.

    A forward pre-hook on the transformer starts each call (its batch and `timestep`, the noise level).
    """

    name = "block cache"

    def __init__(self, stack: BlockStack, head: int):
        super().__init__()
        self.blocks = stack.blocks
        if not 0 <= head < len(self.blocks):
            raise UserError(f"{self.name} needs more than {head} transformer blocks; "
                            f"this {type(stack.net).__name__} has {len(self.blocks)}")
        self.head = head
        self.residual: State | None = None  # R_j of the last full call j
        self.head_call: tuple[Block, tuple, dict] | None = None  # the head block's call on the current network call
        self._head_in: State | None = None
        self._head_out: State | None = None
        self._reusing = False
        signature = inspect.signature(type(stack.net).forward)
        for i, block in enumerate(self.blocks):
            wrap_forward(block.module, partial(self._block_forward, i, type(block.module).forward.__get__(block.module)),
                         self.name)
        self._hook = stack.net.register_forward_pre_hook(partial(self._network_call, signature), with_kwargs=True)

    def _network_call(self, signature: inspect.Signature, net: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(net, *args, **kwargs).arguments
        self.begin_call(bound["hidden_states"], bound["timestep"])
        self._reusing = False

    def _block_forward(self, i: int, original: Any, *args: Any, **kwargs: Any) -> Any:
        block = self.blocks[i]
        if i == 0:
            self._head_in = block.read(args, kwargs)
        if i == self.head:
            self._head_out, self.head_call = block.read(args, kwargs), (block, args, kwargs)
            scale = self.reuse_scale()
            self._reusing = scale is not None and self.residual is not None
            if self._reusing:
                self.cached_calls += 1
                return block.pack(add(self._head_out, self.residual, scale))
            self.full_calls += 1
        if self._reusing:  # a tail block of a cached call: its work is already in the residual
            return block.pack(block.read(args, kwargs))
        out = original(*args, **kwargs)
        if i == len(self.blocks) - 1:
            self.residual = residual(block.split(out), self._head_out)
            self.after_full()
        return out

    def head_residual(self) -> torch.Tensor:
        """h_head - h_0 of the current call's image tokens (what the first-block cache compares between calls)."""
        return self._head_out[0] - self._head_in[0]

    def reuse_scale(self) -> float | None:
        """None to run the tail blocks on this call, else the factor on the kept residual (if there is one yet)."""
        raise NotImplementedError

    def after_full(self) -> None:
        """Called after a full call has set self.residual."""

    def clear(self) -> None:
        self.residual, self._head_in, self._head_out, self.head_call, self._reusing = None, None, None, None, False

    def detach(self) -> None:
        self._hook.remove()
        for block in self.blocks:
            unwrap_forward(block.module)


@dataclass
class FirstBlockCacheConfig:
    """Skip the tail blocks while the first block's residual changed by less than `threshold` (relative L1)."""

    threshold: float = 0.05
    warmup: int = 1  # the first calls of a trajectory, always run in full (cache-dit's max_warmup_steps)

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise UserError(f"fbcache: threshold must be >= 0 (0 = never skip), got {self.threshold}")
        check_warmup("fbcache", self.warmup)


def check_warmup(name: str, warmup: int) -> None:
    """A cache's warmup counts calls: at least the first, which has nothing cached yet."""
    if warmup < 1:
        raise UserError(f"{name}: warmup counts the first calls of a trajectory that run in full, >= 1; got {warmup}")


class FirstBlockCacheHandle(BlockCacheHandle):
    """First-block cache (ParaAttention's FBCache, as diffusers' FirstBlockCache hook): block 0 always runs; the tail
    is skipped when ||r - r_j||_1 / ||r_j||_1 < threshold, r the first block's residual now and r_j at the last full
    call j (so drift accumulates until a full call). threshold 0 never skips; the first `warmup` calls always run."""

    name = "fbcache"

    def __init__(self, stack: BlockStack, config: FirstBlockCacheConfig):
        super().__init__(stack, head=1)
        self.threshold, self.warmup = config.threshold, config.warmup
        self.full_head_residual: torch.Tensor | None = None

    def reuse_scale(self) -> float | None:
        r, r_full = self.head_residual(), self.full_head_residual
        if r_full is None or self.call_index <= self.warmup:
            return None
        change = float((r - r_full).abs().mean() / r_full.abs().mean())
        return 1.0 if change < self.threshold else None

    def after_full(self) -> None:
        self.full_head_residual = self.head_residual()

    def clear(self) -> None:
        super().clear()
        self.full_head_residual = None


def apply_first_block_cache(model: Any, config: FirstBlockCacheConfig) -> FirstBlockCacheHandle:
    """Apply the first-block cache to the transformer inside `model`."""
    return FirstBlockCacheHandle(block_stack(model, "fbcache"), config)
