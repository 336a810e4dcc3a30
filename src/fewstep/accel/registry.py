"""Accelerators by name, and apply_cache(model, 'name:key=value,...') -> handle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fewstep.accel.base import AcceleratorHandle, parse_spec
from fewstep.config import build_config
from fewstep.accel.blockcache import FirstBlockCacheConfig, apply_first_block_cache
from fewstep.accel.deepcache import DeepCacheConfig, apply_deepcache
from fewstep.accel.encoder_propagation import EncoderPropagationConfig, apply_encoder_propagation
from fewstep.accel.errorcache import ErrorCacheConfig, apply_error_cache
from fewstep.accel.teacache import TeaCacheConfig, apply_teacache
from fewstep.core.errors import UserError


@dataclass(frozen=True)
class CacheMethod:
    """A config dataclass, the function that applies it to a model, and what it caches."""

    config: type
    apply: Callable[[Any, Any], AcceleratorHandle]
    summary: str


@dataclass
class NoConfig:
    """No settings."""


def apply_none(model: Any, config: NoConfig) -> AcceleratorHandle:
    """A handle that changes nothing (the baseline row of a comparison)."""
    return AcceleratorHandle()


CACHES: dict[str, CacheMethod] = {
    "none": CacheMethod(NoConfig, apply_none, "no acceleration"),
    "deepcache": CacheMethod(DeepCacheConfig, apply_deepcache, "U-Net: reuse deep features, run the shallow branch"),
    "encprop": CacheMethod(EncoderPropagationConfig, apply_encoder_propagation,
                           "U-Net: reuse encoder features, run the decoder"),
    "fbcache": CacheMethod(FirstBlockCacheConfig, apply_first_block_cache,
                           "transformer: skip the tail blocks while the first block's residual barely changes"),
    "errorcache": CacheMethod(ErrorCacheConfig, apply_error_cache,
                              "transformer: reuse the block stack's residual on profiled calls, with a fitted scale"),
    "teacache": CacheMethod(TeaCacheConfig, apply_teacache,
                            "transformer: skip the stack while the modulated input's rescaled change stays small"),
}


def apply_cache(model: Any, spec: str) -> AcceleratorHandle:
    """Apply the accelerator of a spec like 'deepcache:interval=3,branch=0' to a network, denoiser or LoadedModel;
    'peer:NAME:...' applies another project's cache (accel/peers.py) for comparison."""
    if spec.strip().startswith("peer:"):
        from fewstep.accel.peers import apply_peer

        return apply_peer(model, spec)
    name, settings = parse_spec(spec)
    if name not in CACHES:
        raise UserError(f"unknown cache {name!r}; choose one of {', '.join(CACHES)}")
    accelerator = CACHES[name]
    return accelerator.apply(model, build_config(accelerator.config, settings, where=name))
