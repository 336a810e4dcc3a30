"""Training-free accelerators: feature caches wrapping a network, guidance wrapping a denoiser, searched schedules."""

from fewstep.accel.accelerated import Acceleration, resolve_acceleration, save_accelerated
from fewstep.accel.base import AcceleratorHandle, parse_spec
from fewstep.accel.adaptive_guidance import AdaptiveGuidance, guided_denoiser
from fewstep.accel.registry import ACCELERATORS, Accelerator, apply_accelerator

__all__ = ["ACCELERATORS", "Acceleration", "Accelerator", "AcceleratorHandle", "AdaptiveGuidance",
           "apply_accelerator", "guided_denoiser", "parse_spec", "resolve_acceleration", "save_accelerated"]
