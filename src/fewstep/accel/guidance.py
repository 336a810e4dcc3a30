"""Adaptive Guidance (Castillo et al. 2023): a sample stops its unconditional pass once guidance has converged.

AG's criterion: gamma_t = cos(eps_cond, eps_cfg), the cosine similarity of the conditional and the guided noise
predictions; once gamma_t > threshold, the sample takes plain conditional steps for the rest of its trajectory. With
eps = (x - D) / sigma, gamma_t = cos(x - D_cond, x - D_cfg). The check is per sample; the state is per trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fewstep.accel.base import AcceleratorHandle, build_config, parse_spec
from fewstep.core.denoiser import Cond, Denoiser, as_sigma_batch
from fewstep.core.errors import UserError
from fewstep.samplers.guidance import CFGDenoiser


class _KeepOutput:
    """A denoiser passed through, keeping its last output (for CFG: the conditional rows first)."""

    def __init__(self, denoiser: Denoiser):
        self.inner = denoiser
        self.out: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        self.out = self.inner(x, sigma, cond)
        return self.out


@dataclass
class AdaptiveGuidanceConfig:
    """Stop guiding a sample once cos(eps_cond, eps_cfg) exceeds `threshold` (above 1: never, i.e. plain CFG)."""

    threshold: float = 0.99


class AdaptiveGuidance(CFGDenoiser, AcceleratorHandle):
    """CFGDenoiser (scale, sigma interval, one batched forward) whose guided rows also need `active[row]`.

    `rows_evaluated` counts the rows the model evaluated; `uncond_rows_skipped` the unconditional rows plain CFG
    with the same interval would have added.
    """

    def __init__(self, denoiser: Denoiser, scale: float, sigma_interval: tuple[float, float] | None = None,
                 threshold: float = 0.99):
        CFGDenoiser.__init__(self, _KeepOutput(denoiser), scale, sigma_interval)
        AcceleratorHandle.__init__(self)
        self.threshold = float(threshold)
        self.active: torch.Tensor | None = None  # [batch] bool: still guided
        self.uncond_rows_skipped = 0

    def guided(self, sigma: torch.Tensor) -> torch.Tensor:
        return super().guided(sigma) & self.active

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        if cond is None:
            return super().__call__(x, sigma, cond)
        sigma = as_sigma_batch(sigma, x)
        self.begin_call(x, sigma)
        if self.active is None:
            self.active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.uncond_rows_skipped += int((CFGDenoiser.guided(self, sigma) & ~self.active).sum())
        rows = self.guided(sigma).nonzero()[:, 0]
        out = super().__call__(x, sigma, cond)
        d_cond = self.inner.out[: x.shape[0]]
        gamma = F.cosine_similarity((x - d_cond)[rows].flatten(1), (x - out)[rows].flatten(1), dim=1)
        self.active[rows[gamma > self.threshold]] = False
        return out

    def clear(self) -> None:
        self.active = None

    def stats(self) -> dict[str, int]:
        return {"rows_evaluated": self.rows_evaluated, "uncond_rows_skipped": self.uncond_rows_skipped}


GUIDANCE = {"adaptive": AdaptiveGuidanceConfig}


def guided_denoiser(denoiser: Denoiser, cfg_scale: float = 1.0, cfg_interval: tuple[float, float] | None = None,
                    guidance: str | None = None) -> Denoiser:
    """The denoiser to sample with: as is, CFG (scale, sigma interval), or a guidance spec on top of that CFG.

    `guidance` is None, 'none' or 'adaptive:threshold=0.99'.
    """
    if guidance is None or guidance == "none":
        return denoiser if cfg_scale == 1.0 and cfg_interval is None else CFGDenoiser(denoiser, cfg_scale, cfg_interval)
    name, settings = parse_spec(guidance)
    if name not in GUIDANCE:
        raise UserError(f"unknown guidance {name!r}; choose one of {', '.join(GUIDANCE)} or none")
    if cfg_scale == 1.0:
        raise UserError(f"{name} guidance shortens classifier-free guidance; give it a scale, e.g. --cfg-scale 2")
    config = build_config(GUIDANCE[name], name, settings)
    return AdaptiveGuidance(denoiser, cfg_scale, cfg_interval, config.threshold)
