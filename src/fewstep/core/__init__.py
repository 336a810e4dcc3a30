"""The denoiser interface, conditioning, preconditioning, sigma schedules and seeded noise.

Names are imported on first use, so `fewstep.core.errors` (used by the command line) loads without torch.
"""

import importlib

_EXPORTS = {"CallableDenoiser": "denoiser", "CountingDenoiser": "denoiser", "Denoiser": "denoiser",
            "SigmaRange": "denoiser", "Cond": "cond", "UserError": "errors", "SampleNoise": "noise"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fewstep.core.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fewstep.core' has no attribute {name!r}")
