"""The sampling plan: sampler, sigmas, classifier-free guidance, guidance accelerator and cache, decided once.

As in k-diffusion, the schedule is chosen outside the sampler: `build_plan` resolves what a user asked for
(`PlanSettings`: flags, a bench row, a Python call) against what a model folder records (a teacher's converged
sampler, a student's own sigmas, an accelerated folder's cache and guidance) and against a schedule file from
`fewstep search-schedule`. Everything that samples (sample, eval, bench, accelerate) then uses one `SamplingPlan`,
applied to a model by one context (`plan.applied(model)`) that removes everything it added.

Precedence, per setting: an explicit setting > a schedule file's sigmas and sampler > the model's record > the
defaults (Heun, Karras, 18 steps, no guidance, no cache; a text-to-image model's CFG scale
models.info.TEXT_CFG_SCALE, as diffusers' StableDiffusionPipeline). `guidance="none"` also drops a recorded or
default CFG scale and interval; `cache="none"` drops a recorded cache. A CFG scale of None takes the record's or
the default; an explicit 1 is no guidance, as diffusers' guidance_scale=1. Sampler options (DDIM's eta, EDM's churn)
and schedule options (rho, sigma_min/sigma_max, a discrete model's timestep spacing) follow their sampler and
schedule: a record's options apply only while its sampler (schedule) is the one used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import torch

from fewstep.accel.adaptive_guidance import guided_denoiser
from fewstep.accel.base import AcceleratorHandle
from fewstep.accel.registry import apply_cache
from fewstep.core.autocast import autocast_denoiser
from fewstep.core.cond import CondLike
from fewstep.core.denoiser import Denoiser
from fewstep.core.errors import UserError
from fewstep.core.schedules import check_schedule_options, explicit, is_schedule_file, make_schedule, read_schedule_file
from fewstep.models.info import LoadedModel, default_cfg_scale
from fewstep.samplers import SampleResult, check_sampler_options, generate

DEFAULT_SAMPLER = {"name": "heun", "schedule": "karras", "steps": 18}


@dataclass
class PlanSettings:
    """What to sample with; None leaves the setting to the model's record (a CFG scale of 1 is no guidance)."""

    sampler: str | None = None
    steps: int | None = None
    schedule: str | None = None  # karras | karras_trailing | loglinear | uniform | a schedule file (.json)
    cfg_scale: float | None = None  # 1 = no guidance; None = a schedule file's, the record's, else the default
    cfg_interval: tuple[float, float] | None = None  # guide only for LO < sigma <= HI
    guidance: str | None = None  # a guidance accelerator on top of CFG, e.g. "adaptive:threshold=0.995"; "none"
    cache: str | None = None  # a feature cache, e.g. "deepcache:interval=3"; "none"
    sampler_options: dict | None = None  # e.g. {"eta": 0.5} (ddim, euler_ancestral), {"S_churn": 10} (edm_stochastic)
    schedule_options: dict | None = None  # e.g. {"rho": 5, "sigma_min": 0.01, "sigma_max": 40}, {"spacing": "trailing"}
    mixed_precision: str | None = None  # bf16 | fp16: the denoiser under autocast; None or "no": fp32

    def plan_settings(self) -> "PlanSettings":
        """Just the plan's fields (for subclasses such as eval's settings)."""
        return PlanSettings(**{f.name: getattr(self, f.name) for f in fields(PlanSettings)})


@dataclass(frozen=True)
class AppliedPlan:
    """A plan on a model: the denoiser to sample with (guided) and the cache handle (its stats, its removal)."""

    denoiser: Denoiser
    handle: AcceleratorHandle


@dataclass(frozen=True)
class SamplingPlan:
    """A resolved plan: every setting explicit, the sigmas computed and checked against the model."""

    sampler: str
    schedule: str
    sigmas: torch.Tensor
    recorded_sigmas: tuple[float, ...] | None = None  # sigmas from a record or schedule file, as written there
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] | None = None
    guidance: str | None = None
    cache: str | None = None
    sampler_options: dict | None = None
    schedule_options: dict | None = None
    mixed_precision: str | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def settings(self) -> PlanSettings:
        """The explicit settings that reproduce this plan on the same model (what a result row records)."""
        return PlanSettings(self.sampler, self.steps, self.schedule, self.cfg_scale, self.cfg_interval,
                            self.guidance, self.cache, self.sampler_options, self.schedule_options,
                            self.mixed_precision)

    def sampler_record(self) -> dict[str, Any]:
        """ModelInfo.sampler for this plan: name, schedule, steps, their options and any explicit sigmas."""
        record = {"name": self.sampler, "schedule": self.schedule, "steps": self.steps}
        record.update({k: v for k, v in (("options", self.sampler_options),
                                         ("schedule_options", self.schedule_options)) if v})
        return {**record, "sigmas": list(self.recorded_sigmas)} if self.recorded_sigmas else record

    def acceleration_record(self, text: bool = False) -> dict[str, Any] | None:
        """ModelInfo.acceleration for this plan (None: nothing to record); a text-to-image model always records its
        CFG scale, which without a record would fall back to models.info.TEXT_CFG_SCALE."""
        record = {"cache": None if self.cache == "none" else self.cache,
                  "guidance": None if self.guidance == "none" else self.guidance,
                  "cfg_scale": self.cfg_scale, "cfg_interval": self.cfg_interval}
        unset = {"cache": None, "guidance": None, "cfg_scale": 1.0, "cfg_interval": None}
        return None if record == unset and not text else record

    @contextlib.contextmanager
    def applied(self, model: LoadedModel) -> Iterator[AppliedPlan]:
        """Guidance around the model's denoiser and the cache on its network, removed on exit."""
        denoiser = guided_denoiser(autocast_denoiser(model.denoiser, self.mixed_precision), self.cfg_scale,
                                   self.cfg_interval, self.guidance)
        handle = apply_cache(model, self.cache or "none")
        try:
            yield AppliedPlan(denoiser, handle)
        finally:
            handle.remove()

    def check(self, model: LoadedModel) -> None:
        """Fail now, not an hour into a run, on a cache or guidance that does not apply to this model."""
        with self.applied(model):
            pass


def _sigmas(model: LoadedModel, s: PlanSettings
            ) -> tuple[str, dict, torch.Tensor, tuple | None, dict | None]:
    """(schedule name, a schedule file's record ({} without one), sigmas, the sigmas as recorded, schedule options) for
    the settings."""
    recorded = {**DEFAULT_SAMPLER, **model.info.sampler}
    if is_schedule_file(s.schedule):
        found = read_schedule_file(s.schedule)
        steps = len(found["sigmas"]) - 1
        if s.steps is not None and s.steps != steps:
            raise UserError(f"the schedule file {s.schedule} fixes the steps ({steps}); drop --steps")
        if s.schedule_options:
            raise UserError(f"the schedule file {s.schedule} fixes the sigmas; drop the schedule options")
        return str(s.schedule), found, explicit(found["sigmas"]), tuple(found["sigmas"][:-1]), None
    if s.steps is None and s.schedule is None and not s.schedule_options and recorded.get("sigmas"):  # a student's
        return recorded["schedule"], {}, explicit(recorded["sigmas"]), tuple(recorded["sigmas"]), None
    schedule = s.schedule or recorded["schedule"]
    steps = recorded["steps"] if s.steps is None else s.steps
    options = s.schedule_options or (recorded.get("schedule_options") if schedule == recorded["schedule"] else None)
    check_schedule_options(schedule, options or {})
    return schedule, {}, make_schedule(schedule, steps, model.denoiser.sigma_range, **(options or {})), None, options


def build_plan(model: LoadedModel, settings: PlanSettings | None = None) -> SamplingPlan:
    """Resolve `settings` against the model's record and a schedule file into an explicit, checked plan."""
    s = (settings or PlanSettings()).plan_settings()
    schedule, found, sigmas, recorded_sigmas, schedule_options = _sigmas(model, s)
    recorded_sampler = model.info.sampler.get("name", DEFAULT_SAMPLER["name"])
    sampler = s.sampler or found.get("sampler") or recorded_sampler
    options = s.sampler_options or (model.info.sampler.get("options") if sampler == recorded_sampler else None)
    check_sampler_options(sampler, options or {})
    if s.mixed_precision not in (None, "no", "bf16", "fp16"):
        raise UserError(f"mixed precision must be no, bf16 or fp16, got {s.mixed_precision!r}")
    recorded = model.info.acceleration or {}
    guided = {} if s.guidance == "none" else recorded
    interval = guided.get("cfg_interval") if s.cfg_interval is None else s.cfg_interval
    if s.cfg_scale is not None:
        scale = s.cfg_scale
    elif s.guidance == "none":
        scale = 1.0
    else:  # a searched schedule's own scale, else the record's or the default
        scale = found["cfg_scale"] if "cfg_scale" in found else default_cfg_scale(model)
    return SamplingPlan(sampler=sampler, schedule=schedule, sigmas=sigmas, recorded_sigmas=recorded_sigmas,
                        cfg_scale=scale, cfg_interval=tuple(interval) if interval else None,
                        guidance=guided.get("guidance") if s.guidance is None else s.guidance,
                        cache=recorded.get("cache") if s.cache is None else s.cache, sampler_options=options or None,
                        schedule_options=schedule_options or None,
                        mixed_precision=None if s.mixed_precision == "no" else s.mixed_precision)


def sample(model: LoadedModel, plan: SamplingPlan, n: int, seed: int = 0, cond: CondLike = None,
           batch_size: int = 256, device: str | torch.device = "cpu",
           indices: Sequence[int] | None = None) -> SampleResult:
    """Draw n samples (item i from noise index indices[i] of `seed`, default i) from `model` with `plan` applied."""
    with plan.applied(model) as run:
        return generate(run.denoiser, model.info.shape, n, plan.sigmas, plan.sampler, seed, cond, batch_size, device,
                        indices, plan.sampler_options)


__all__ = ["AppliedPlan", "PlanSettings", "SamplingPlan", "build_plan", "sample"]
