"""Flow matching (rectified flow) as an EDM denoiser, with the sigmas of diffusers' FlowMatchEulerDiscreteScheduler.

A flow model sees x_t = (1 - t) y + t n and predicts the velocity v = n - y. With sigma = t / (1 - t) the EDM state
x = y + sigma n is x_t (1 + sigma), so D(x, sigma) = x_t - t v exactly, and Euler in sigma is Euler in t, step for
step: x_t + (t' - t) v.

t = 1, where diffusers' flow schedules start, is sigma = inf. fewstep puts it at SIGMA_INF = 2^26 (core/denoiser.py):
there t = 1 - 1/(1 + 2^26) rounds to exactly 1 in float32, so the network gets diffusers' very inputs (x_t = n
exactly, timestep 1000, since (1 + 2^26) n / (1 + 2^26) is exact in float64), and Euler's first step lands at
x_t + (t' - 1) v + v / (1 + 2^26): an error below 1.5e-8 |v|, under float32's own rounding (6e-8). The state
x = (1 + sigma) n is then ~6.7e7 n; its first step subtracts two such numbers, which float32 would leave with an
absolute error of ~4 (6.7e7 * 6e-8), so init_noise_scale is float64 and the sampling state stays float64
(samplers/generate.py). Samplers treat sigma >= SIGMA_INF as infinity (samplers/ode.py, samplers/multistep.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewstep.core.cond import labels_or_null
from fewstep.core.denoiser import SIGMA_INF, Cond, SigmaRange, append_dims, as_sigma_batch
from fewstep.core.errors import UserError
from fewstep.models.diffusers_adapter import TimestepCall

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
DEFAULT_STEPS = 28  # the default num_inference_steps of diffusers' SD3 and Flux pipelines


def sigma_of_t(t: torch.Tensor) -> torch.Tensor:
    """sigma = t / (1 - t) in float64; t = 1 (pure noise) is SIGMA_INF."""
    t = torch.as_tensor(t).double()
    return (t / (1 - t)).clamp(max=SIGMA_INF)  # t / 0 = inf at t = 1


def t_of_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """t = sigma / (1 + sigma) in float64."""
    sigma = torch.as_tensor(sigma).double()
    return sigma / (1 + sigma)


def dynamic_shift_mu(config: Any, image_seq_len: int) -> float:
    """mu of resolution-dependent shifting, linear in the image's token count (diffusers' calculate_shift)."""
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return image_seq_len * m + config.base_shift - m * config.base_image_seq_len


@dataclass
class FlowSchedule:
    """A FlowMatchEulerDiscreteScheduler and how the model's pipeline calls set_timesteps on it."""

    scheduler: Any  # diffusers.FlowMatchEulerDiscreteScheduler
    mu: float | None = None  # dynamic shifting's exponent at the model's image sequence length
    pipeline_sigmas: bool = False  # Flux's pipelines pass sigmas = linspace(1, 1/n, n) instead of the default spacing

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def t_min(self) -> float:
        """The smallest t of the scheduler's training table (its shifted 1/N)."""
        return float(self.scheduler.sigma_min)

    def t_values(self, steps: int) -> torch.Tensor:
        """diffusers' own sigmas (flow times t, float32, ending in 0) for `steps` steps, as the pipeline sets them."""
        sigmas = np.linspace(1.0, 1 / steps, steps) if self.pipeline_sigmas else None
        self.scheduler.set_timesteps(steps, sigmas=sigmas, mu=self.mu)
        return self.scheduler.sigmas.clone()

    def sigmas(self, steps: int) -> torch.Tensor:
        """The same schedule as EDM sigmas (float32 values; t = 1 becomes SIGMA_INF)."""
        return sigma_of_t(self.t_values(steps)).float()

    def to_config(self) -> dict[str, Any]:
        """The scheduler config as diffusers saves it (scheduler_config.json)."""
        return json.loads(self.scheduler.to_json_string())


def read_flow_scheduler(config: dict[str, Any], image_seq_len: int | None = None,
                        pipeline_sigmas: bool = False) -> FlowSchedule:
    """A flow scheduler config as a FlowSchedule; settings fewstep cannot honour are refused in one line."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    name = config.get("_class_name", "")
    if name not in FLOW_SCHEDULERS:
        raise UserError(f"scheduler {name!r} is not a flow-matching scheduler fewstep reads "
                        f"({', '.join(FLOW_SCHEDULERS)})")
    if config.get("invert_sigmas"):
        raise UserError(f"{name} with invert_sigmas=true is not supported; fewstep reads flows from t = 1 to 0")
    if float(config.get("shift", 1.0)) <= 0:
        raise UserError(f"{name}: shift must be positive, got {config.get('shift')}")
    try:  # FlowMatchHeunDiscreteScheduler's num_train_timesteps and shift space the steps exactly like Euler's
        scheduler = FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in config.items() if k[0] != "_"})
    except (ValueError, ImportError) as e:
        raise UserError(f"{name}: {str(e).splitlines()[0]}") from None
    cfg, mu = scheduler.config, None
    if cfg.use_dynamic_shifting:
        if image_seq_len is None:
            raise UserError(f"{name} with use_dynamic_shifting=true needs a transformer's image sequence length; "
                            "save it with use_dynamic_shifting=false and a shift")
        if cfg.base_shift is None or cfg.max_shift is None:
            raise UserError(f"{name} with use_dynamic_shifting=true needs base_shift and max_shift")
        mu = dynamic_shift_mu(cfg, image_seq_len)
    return FlowSchedule(scheduler, mu, pipeline_sigmas)


def default_sampling(config: dict[str, Any], steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """The sampling record that reproduces a flow scheduler: its spacing ("scheduler"), Euler, Heun or re-noising."""
    name = "euler"
    if config.get("_class_name") == "FlowMatchHeunDiscreteScheduler":
        name = "heun"  # fewstep's Heun in sigma (Euler from t = 1); diffusers' runs the trapezoid in t
    elif config.get("stochastic_sampling"):  # x0 = x_t - t v, then x_t' = (1 - t') x0 + t' fresh noise
        name = "consistency"
    return {"name": name, "schedule": "scheduler", "steps": steps}


class FlowMatchDenoiser(nn.Module):
    """D(x, sigma) of a velocity network: t = sigma / (1 + sigma), x_t = x / (1 + sigma), D = x_t - t v."""

    def __init__(self, network: nn.Module, call: TimestepCall, schedule: FlowSchedule, sigma_data: float = 0.5,
                 num_classes: int = 0, text_conditioned: bool = False):
        super().__init__()
        self.network = network
        self.call = call
        self.schedule = schedule
        self.sigma_data = float(sigma_data)
        self.num_classes = int(num_classes)
        self.text_conditioned = text_conditioned
        self.sigma_range = SigmaRange(float(sigma_of_t(schedule.t_min)), SIGMA_INF, scheduler=schedule.sigmas)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x).double()
        t = sigma / (1 + sigma)
        x_t = x.double() / append_dims(1 + sigma, x.ndim)
        timestep = t.float() * self.schedule.num_train_timesteps  # scheduler.timesteps: float32 t times N
        v = self.call(self.network, x_t.float(), timestep, cond).double()
        return (x_t - append_dims(t, x.ndim) * v).float()

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """A flow starts from unit noise x_t = n, i.e. x = (1 + sigma) n; float64, so the sampling state is float64."""
        return 1 + torch.as_tensor(sigma_max, dtype=torch.float64)


def network_call(net: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, cond: Cond,
                 num_classes: int = 0) -> torch.Tensor:
    """A fewstep network (U-Net, DiT, MLP) fed as diffusers feeds a UNet2DModel: net(x_t, t * N, class labels)."""
    from fewstep.models.networks import call_network

    return call_network(net, x_t, timestep, labels_or_null(cond, num_classes, x_t.shape[0], x_t.device))


def flow_denoiser(net: nn.Module, num_classes: int = 0, sigma_data: float = 0.5,
                  scheduler_config: dict[str, Any] | None = None) -> FlowMatchDenoiser:
    """A fewstep network as a flow model, with a FlowMatchEulerDiscreteScheduler config (default: shift 1)."""
    config = scheduler_config or {"_class_name": "FlowMatchEulerDiscreteScheduler"}
    return FlowMatchDenoiser(net, partial(network_call, num_classes=num_classes), read_flow_scheduler(config),
                             sigma_data, num_classes)


def scheduler_config_of(folder: Path) -> dict[str, Any]:
    """The scheduler config beside a model (scheduler_config.json, or scheduler/scheduler_config.json)."""
    for path in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if path.exists():
            return json.loads(path.read_text())
    raise UserError(f"{folder}: no scheduler_config.json; save the scheduler with save_pretrained")
