"""The denoiser interface, preconditioning, sigma schedules and seeded noise."""

from fewstep.core.denoiser import CallableDenoiser, CountingDenoiser, Denoiser, SigmaRange
from fewstep.core.errors import UserError
from fewstep.core.noise import SampleNoise

__all__ = ["CallableDenoiser", "CountingDenoiser", "Denoiser", "SampleNoise", "SigmaRange", "UserError"]
