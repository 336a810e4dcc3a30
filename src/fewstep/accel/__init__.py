"""Training-free accelerators: feature caches wrapping a network, guidance wrapping a denoiser, searched schedules."""

from fewstep.accel.adaptive_guidance import AdaptiveGuidance, guided_denoiser
from fewstep.accel.base import AcceleratorHandle, parse_spec
from fewstep.accel.registry import CACHES, CacheMethod, apply_cache

__all__ = ["CACHES", "AcceleratorHandle", "AdaptiveGuidance", "CacheMethod", "apply_cache", "guided_denoiser",
           "parse_spec"]
