"""Adaptive Guidance (Castillo et al. 2023): a sample stops its unconditional pass once guidance has converged.

AG's criterion: gamma_t = cos(eps_cond, eps_cfg), the cosine similarity of the conditional and the guided noise
predictions; once gamma_t > threshold, the sample takes plain conditional steps for the rest of its trajectory. With
eps = (x - D) / sigma, gamma_t = cos(x - D_cond, x - D_cfg). The check is per sample; the state is per trajectory.

On an EDM model started at sigma_max = 80, x - D is almost all noise at the first steps, so the paper's gamma_t is
above 0.999 there and every sample stops at once. The default criterion asks the same question of the denoised
predictions, gamma_t = cos(D_cond, D_cfg): with D_cfg = D_cond + (scale - 1)(D_cond - D_uncond), 1 - gamma_t is, to
first order, half the squared size of the guidance term's component orthogonal to D_cond relative to |D_cond|. Both
are on the data's scale at every noise level, and the term vanishes as D_cond and D_uncond both approach x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fewstep.accel.base import AcceleratorHandle, parse_spec
from fewstep.config import build_config
from fewstep.core.denoiser import Cond, Denoiser, as_sigma_batch
from fewstep.core.errors import UserError
from fewstep.samplers.cfg import CFGDenoiser


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


SPACES = ("denoised", "eps")


@dataclass
class AdaptiveGuidanceConfig:
    """Stop guiding a sample once gamma exceeds `threshold` (above 1: never, i.e. plain CFG).

    `space` = denoised: gamma = cos(D_cond, D_cfg); eps: the paper's cos(eps_cond, eps_cfg).
    """

    threshold: float = 0.995
    space: str = "denoised"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise UserError(f"adaptive: space must be one of {', '.join(SPACES)}, got {self.space!r}")


def similarity(x: torch.Tensor, d_cond: torch.Tensor, d_cfg: torch.Tensor, space: str) -> torch.Tensor:
    """gamma per row: cos(D_cond, D_cfg) in the denoised space, cos(x - D_cond, x - D_cfg) in the eps space."""
    if space == "eps":
        d_cond, d_cfg = x - d_cond, x - d_cfg
    return F.cosine_similarity(d_cond.flatten(1), d_cfg.flatten(1), dim=1)


class AdaptiveGuidance(CFGDenoiser, AcceleratorHandle):
    """CFGDenoiser (scale, sigma interval, one batched forward) whose guided rows also need `active[row]`.

    `rows_evaluated` counts the rows the model evaluated; `uncond_rows_skipped` the unconditional rows plain CFG
    with the same interval would have added.
    """

    def __init__(self, denoiser: Denoiser, scale: float, sigma_interval: tuple[float, float] | None = None,
                 threshold: float = 0.995, space: str = "denoised"):
        CFGDenoiser.__init__(self, _KeepOutput(denoiser), scale, sigma_interval)
        AcceleratorHandle.__init__(self)
        self.threshold = float(threshold)
        self.space = AdaptiveGuidanceConfig(threshold, space).space  # checked
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
        gamma = similarity(x[rows], d_cond[rows], out[rows], self.space)
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

    `guidance` is None, 'none' or 'adaptive:threshold=0.995,space=denoised'.
    """
    if cfg_interval is not None and not 0 <= cfg_interval[0] < cfg_interval[1]:
        raise UserError(f"a CFG interval needs 0 <= LO < HI, got {cfg_interval[0]:g},{cfg_interval[1]:g}")
    if guidance is None or guidance == "none":
        return denoiser if cfg_scale == 1.0 and cfg_interval is None else CFGDenoiser(denoiser, cfg_scale, cfg_interval)
    name, settings = parse_spec(guidance)
    if name not in GUIDANCE:
        raise UserError(f"unknown guidance {name!r}; choose one of {', '.join(GUIDANCE)} or none")
    if cfg_scale == 1.0:
        raise UserError(f"{name} guidance shortens classifier-free guidance; give it a scale, e.g. --cfg-scale 2")
    config = build_config(GUIDANCE[name], settings, where=name)
    return AdaptiveGuidance(denoiser, cfg_scale, cfg_interval, config.threshold, config.space)
