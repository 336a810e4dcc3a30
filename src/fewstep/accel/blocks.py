"""The block stack of a diffusers transformer as the block caches see it: its blocks in order, each one's state.

Every transformer fewstep loads (its own DiT; diffusers' DiT, PixArt, SD3, Flux) runs a stack of blocks between its
embedding and its output layer: `transformer_blocks`, then for Flux `single_transformer_blocks`. A block maps a
state to a state: the image tokens `hidden_states`, plus the text tokens `encoder_hidden_states` for joint blocks
(SD3, Flux), which return a tuple. diffusers' TransformerBlockRegistry says, per block class, where each is read
and returned; a block class it does not list cannot be mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewstep.core.denoiser import backbone
from fewstep.core.errors import UserError

State = tuple[torch.Tensor, torch.Tensor | None]  # (hidden_states, encoder_hidden_states or None)


@dataclass(frozen=True)
class Block:
    """One block and diffusers' metadata for its class (where its states are read and returned)."""

    module: nn.Module
    meta: Any  # diffusers.hooks._helpers.TransformerBlockMetadata

    @property
    def joint(self) -> bool:
        """Whether the block carries text tokens too (returns a tuple)."""
        return self.meta.return_encoder_hidden_states_index is not None

    def read(self, args: tuple, kwargs: dict) -> State:
        """The state a call of this block receives."""
        get = self.meta._get_parameter_from_args_kwargs
        h = get(self.meta.hidden_states_argument_name, args, kwargs)
        return h, get(self.meta.encoder_hidden_states_argument_name, args, kwargs) if self.joint else None

    def split(self, out: Any) -> State:
        """The state a call of this block returned."""
        if not self.joint:
            return (out[0] if isinstance(out, tuple) else out), None
        return out[self.meta.return_hidden_states_index], out[self.meta.return_encoder_hidden_states_index]

    def pack(self, state: State) -> Any:
        """A state in the form this block returns it."""
        if not self.joint:
            return state[0]
        out = [None, None]
        out[self.meta.return_hidden_states_index] = state[0]
        out[self.meta.return_encoder_hidden_states_index] = state[1]
        return tuple(out)


@dataclass(frozen=True)
class BlockStack:
    """A transformer and its blocks in the order they run."""

    net: nn.Module
    blocks: list[Block]


def _stacks(net: nn.Module) -> list[nn.ModuleList]:
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [child for name, child in net.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, nn.ModuleList)]


def block_stack(target: Any, accelerator: str) -> BlockStack:
    """The transformer inside a network, a denoiser or a LoadedModel, and its mapped blocks; one line if none maps."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        obj = backbone(target)
    except TypeError:  # a bare network
        obj = target
    net = next((m for m in obj.modules() if _stacks(m)), None) if isinstance(obj, nn.Module) else None
    if net is None:
        raise UserError(f"{accelerator} works on transformers (DiT, PixArt, SD3, Flux); this model's network is a "
                        f"{type(obj).__name__}, which has no transformer block list")
    blocks = []
    for module in (b for stack in _stacks(net) for b in stack):
        try:
            blocks.append(Block(module, TransformerBlockRegistry.get(type(module))))
        except ValueError:
            raise UserError(f"{accelerator} cannot map the blocks of {type(net).__name__}: block class "
                            f"{type(module).__name__} is not one diffusers describes") from None
    return BlockStack(net, blocks)


def residual(after: State, before: State) -> State:
    """after - before, state by state (None where either lacks text tokens, as SD3's last block returns none)."""
    text = after[1] - before[1] if after[1] is not None and before[1] is not None else None
    return after[0] - before[0], text


def add(state: State, delta: State, scale: float = 1.0) -> State:
    """state + scale * delta, state by state."""
    text = state[1] + scale * delta[1] if state[1] is not None and delta[1] is not None else state[1]
    return state[0] + scale * delta[0], text
