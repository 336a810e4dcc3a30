"""Mixed precision for sampling: the denoiser's network under torch.autocast, its output back in float32."""

from __future__ import annotations

import sys

import torch

from fewstep.core.cond import CondLike
from fewstep.core.denoiser import Denoiser

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastDenoiser:
    """D(x, sigma, cond) run under autocast to bf16 or fp16 on x's device; fp16 on CPU is left in fp32 (noted once)."""

    def __init__(self, denoiser: Denoiser, mixed_precision: str):
        self.inner = denoiser
        self.dtype = DTYPES[mixed_precision]
        self.noted = False

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: CondLike = None) -> torch.Tensor:
        if x.device.type == "cpu" and self.dtype == torch.float16:
            if not self.noted:
                print("fewstep: note: fp16 autocast does nothing on CPU; sampling in fp32 (use bf16)", file=sys.stderr)
                self.noted = True
            return self.inner(x, sigma, cond)
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.inner(x, sigma, cond).float()


def autocast_denoiser(denoiser: Denoiser, mixed_precision: str | None) -> Denoiser:
    """The denoiser under autocast for "bf16" / "fp16"; unchanged for None or "no"."""
    return denoiser if mixed_precision in (None, "no") else AutocastDenoiser(denoiser, mixed_precision)
