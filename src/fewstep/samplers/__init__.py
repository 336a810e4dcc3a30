"""Samplers as short functions over the denoiser interface, a registry, guidance, and `generate`."""

from fewstep.samplers.generate import SampleResult, generate, initial_latents
from fewstep.samplers.cfg import CFGDenoiser
from fewstep.samplers.registry import SAMPLERS, SamplerSpec, check_sampler_options, get_sampler, register

__all__ = ["CFGDenoiser", "SAMPLERS", "SampleResult", "SamplerSpec", "check_sampler_options", "generate", "get_sampler",
           "initial_latents", "register"]
