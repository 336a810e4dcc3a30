"""A pipeline's diffusers scheduler config read strictly: its noise schedule, prediction, timestep map and sampling.

Every key of the config is either honoured (the noise levels and the timesteps diffusers would use come from the
scheduler itself, so spacing, offsets, Karras/exponential/beta sigmas and final sigmas are exact by construction),
or it chooses the solver (then the default sampling record names fewstep's twin, or the nearest sampler and says
so), or it changes the model's output in a way fewstep does not reproduce and is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fewstep.core.errors import UserError
from fewstep.models.diffusers_adapter import PREDICTION_TYPES, discrete_sigmas

# noise levels, prediction, the model's parameterisation: handed to the diffusers scheduler that computes them
MODEL_KEYS = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
              "rescale_betas_zero_snr", "timestep_scaling"}
# where the sampling timesteps / sigmas lie: honoured by asking the scheduler's own set_timesteps
SCHEDULE_KEYS = {"timestep_spacing", "steps_offset", "set_alpha_to_one", "use_karras_sigmas", "use_exponential_sigmas",
                 "use_beta_sigmas", "use_lu_lambdas", "sigma_min", "sigma_max", "final_sigmas_type",
                 "original_inference_steps", "lambda_min_clipped"}
# which solver steps between them: the default record mirrors it where fewstep has the same solver
SOLVER_KEYS = {"algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final",
               "skip_prk_steps", "variance_type", "predict_x0", "disable_corrector", "solver_p"}
# settings fewstep does not reproduce: accepted only at the value that leaves the model's output alone
REQUIRED = {"clip_sample": False, "thresholding": False, "interpolation_type": "linear", "timestep_type": "discrete",
            "use_flow_sigmas": False, "use_dynamic_shifting": False, "shift_terminal": None}
WHY = {"clip_sample": "clips the predicted clean latents; set it to false",
       "thresholding": "applies dynamic thresholding to the predicted clean sample; set it to false",
       "interpolation_type": "spaces sigmas log-linearly but timesteps linearly; use 'linear'",
       "timestep_type": "feeds the network 0.25 log(sigma) (an EDM-style model); fewstep reads discrete timesteps",
       "use_flow_sigmas": "makes this a flow-matching schedule, not a VP one",
       "use_dynamic_shifting": "makes this a flow-matching schedule, not a VP one",
       "shift_terminal": "makes this a flow-matching schedule, not a VP one"}
# read only when a REQUIRED setting is on, so inert here
INERT_KEYS = {"dynamic_thresholding_ratio", "sample_max_value", "clip_sample_range", "flow_shift", "time_shift_type"}

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "UniPCMultistepScheduler", "LCMScheduler")
EULER_FAMILY = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                "LMSDiscreteScheduler")  # their linspace timesteps are fractional, their sigmas linear in t
ROUNDING = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")  # call the network at rounded timesteps
TIMESTEP_SPACED = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler")  # step between timesteps
ZERO_SNR_ALPHA_BAR = 2.0**-24  # diffusers' Euler / DPM schedulers' alpha_bar_T under rescale_betas_zero_snr


@dataclass(frozen=True)
class VPSchedule:
    """A scheduler config as fewstep reads it: alpha_bar table, prediction, timestep map and default sampling."""

    scheduler: Any  # the diffusers scheduler built from the config (its own set_timesteps gives the sigmas)
    alphas_cumprod: torch.Tensor
    prediction_type: str
    timestep_map: str  # "log" | "linear" | "round": how a sigma between trained levels becomes the network's t
    boundary_scaling: float | None  # LCM's timestep_scaling: D = c_skip(t) x_t + c_out(t) x0 (LCMScheduler)
    sampler: dict = field(default_factory=dict)  # the default sampling record (ModelInfo.sampler)


def read_scheduler(config: dict, where: str) -> VPSchedule:
    """Read a scheduler_config.json strictly: every setting honoured, mirrored or refused with one line."""
    import diffusers

    name = config.get("_class_name", "")
    if name not in SCHEDULERS:
        raise UserError(f"{where}: scheduler {name or '(no _class_name)'!r} is not one fewstep reads "
                        f"({', '.join(SCHEDULERS)})")
    scheduler = getattr(diffusers, name).from_config(config)
    settings = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    for key, value in settings.items():
        if key in REQUIRED and value != REQUIRED[key]:
            raise UserError(f"{where}: {name} setting {key}={value!r} is not supported: it {WHY[key]}")
        if key not in MODEL_KEYS | SCHEDULE_KEYS | SOLVER_KEYS | REQUIRED.keys() | INERT_KEYS:
            raise UserError(f"{where}: {name} setting {key}={value!r} is not one fewstep reads; remove it or "
                            "use a scheduler without it")
    if settings.get("variance_type") in ("learned", "learned_range"):
        raise UserError(f"{where}: variance_type={settings['variance_type']!r} needs a network that predicts its "
                        "variance; fewstep reads fixed-variance models")
    prediction = settings.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"{where}: prediction_type {prediction!r} is not one of {', '.join(PREDICTION_TYPES)}")
    alphas = scheduler.alphas_cumprod.clone()
    if settings.get("rescale_betas_zero_snr"):
        if prediction == "epsilon":
            raise UserError(f"{where}: rescale_betas_zero_snr with epsilon prediction cannot recover the clean sample "
                            "at the last timestep; use v_prediction")
        alphas[-1] = max(float(alphas[-1]), ZERO_SNR_ALPHA_BAR)  # sigma_T = 4096 instead of infinity, as diffusers' Euler
    return VPSchedule(scheduler, alphas, prediction, timestep_map(name, settings),
                      settings.get("timestep_scaling") if name == "LCMScheduler" else None, default_sampler(name, settings))


def timestep_map(name: str, settings: dict) -> str:
    """How the scheduler turns a sigma into the network's timestep, so fewstep calls the network where it does."""
    sigma_space = any(settings.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                                                "use_lu_lambdas"))
    if name in ROUNDING:
        return "round"  # t = round(t(sigma)), sigma kept: DPM-Solver's and UniPC's Karras / exponential / beta sigmas
    if name in EULER_FAMILY and not sigma_space and settings.get("timestep_spacing") == "linspace":
        return "linear"  # np.interp(t, arange, sigmas): sigma linear between trained timesteps
    return "log"  # log(sigma) interpolation (diffusers' _sigma_to_t); exact at integer timesteps


def default_sampler(name: str, settings: dict, steps: int = 50) -> dict:
    """The sampling record mirroring the scheduler: fewstep's twin on its own sigmas, else the nearest, with a note."""
    record = {"schedule": "scheduler", "steps": steps, "scheduler": name}
    order = settings.get("solver_order", 2)
    if name == "DDIMScheduler":
        return {"name": "ddim", **record}
    if name == "DDPMScheduler":
        fixed_small = settings.get("variance_type") in ("fixed_small", "fixed_small_log")
        return {"name": "ddpm", **record, **({} if fixed_small else {
            "note": f"variance_type={settings.get('variance_type')}: fewstep's ddpm uses the posterior variance "
                    "(fixed_small)"})}
    if name == "EulerDiscreteScheduler":
        return {"name": "euler", **record}
    if name == "EulerAncestralDiscreteScheduler":
        return {"name": "euler_ancestral", **record}
    if name == "HeunDiscreteScheduler":
        return {"name": "heun", **record}
    if name == "LCMScheduler":
        return {"name": "consistency", **record, "steps": 4}
    if name == "DPMSolverMultistepScheduler":
        sampler = {1: "ddim", 2: "dpmpp_2m"}.get(order, "dpmpp_3m")
        twin = settings.get("algorithm_type") == "dpmsolver++" and (order == 1 or settings.get("solver_type") == "midpoint")
        return {"name": sampler, **record, **({} if twin else {
            "note": f"algorithm_type={settings.get('algorithm_type')}, solver_type={settings.get('solver_type')}: "
                    f"nearest is fewstep's {sampler} (DPM-Solver++, midpoint)"})}
    if name == "PNDMScheduler":  # PLMS extrapolates the noise estimate; diffusers' PNDM its raw (v) output
        twin = settings.get("skip_prk_steps") and settings.get("prediction_type", "epsilon") == "epsilon"
        return {"name": "plms", **record, **({} if twin else {
            "note": "fewstep's plms extrapolates the noise estimate with a Heun warm-up; PNDMScheduler here "
                    "extrapolates the v output or warms up with Runge-Kutta steps"})}
    nearest = {"LMSDiscreteScheduler": "linear multistep", "UniPCMultistepScheduler": "UniPC"}[name]
    return {"name": "dpmpp_2m", **record, "note": f"{nearest} has no fewstep twin: DPM-Solver++(2M) on its timesteps"}


def scheduler_sigmas(read: VPSchedule, steps: int) -> torch.Tensor:
    """The sigmas diffusers' scheduler steps through for `steps` inference steps, ending where it ends.

    Timestep-spaced schedulers (DDPM, DDIM, PNDM, LCM) give the sigmas of their timesteps, ending at 0 or, with
    set_alpha_to_one=false (DDIM, PNDM), at the lowest trained sigma; sigma-spaced ones give their own sigmas.
    """
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    scheduler = read.scheduler
    scheduler.set_timesteps(steps)
    name = type(scheduler).__name__
    table = discrete_sigmas(read.alphas_cumprod).float()
    if name in TIMESTEP_SPACED:
        timesteps = torch.unique(scheduler.timesteps.long()).flip(0)  # PNDM repeats one timestep (PLMS warm-up)
        final = scheduler.config.get("set_alpha_to_one", True) or name == "LCMScheduler"
        return torch.cat([table[timesteps], torch.zeros(1) if final else table[:1]])
    sigmas = torch.unique_consecutive(scheduler.sigmas.float())  # Heun lists every inner sigma twice
    return torch.where(sigmas.isinf(), table[-1], sigmas)  # a zero-SNR sigma_T, as read_scheduler clamps it
