"""fewstep: distill, accelerate and honestly measure diffusion models."""

__version__ = "0.1.0"
