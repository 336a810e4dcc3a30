"""A user's diffusers U-Net (UNet2DModel, or a pipeline's text-conditioned UNet2DConditionModel) with its discrete
VP scheduler, seen as an EDM denoiser."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fewstep.core.cond import Cond as TextCond
from fewstep.core.cond import labels_of
from fewstep.core.denoiser import Cond, SigmaRange, append_dims, as_sigma_batch
from fewstep.core.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_MAPS = ("log", "linear", "round")
LCM_SIGMA_DATA = 0.5  # LCMScheduler's fixed sigma_data of its boundary condition

# network(x_t, the scheduler's timestep, cond) -> its prediction, fed as the model's diffusers pipeline feeds it
TimestepCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the VP model's x_t / sqrt(alpha_bar_t) = y + sigma_t n."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


class DiffusersVPDenoiser(nn.Module):
    """D(x, sigma, cond) for a discrete-time VP network: x_t = x / sqrt(1 + sigma^2), t found from sigma exactly.

    `timestep_map` says how a sigma between two trained levels becomes the network's timestep, as the scheduler the
    model ships with computes it: "log" interpolates log(sigma) (diffusers' _sigma_to_t), "linear" interpolates
    sigma (Euler-type schedulers' np.interp at fractional timesteps), "round" rounds the "log" timestep (DPM-Solver
    and UniPC). `boundary_scaling` is LCMScheduler's timestep_scaling: its consistency boundary condition.
    A text-conditioned network (a UNet2DConditionModel) takes a `Cond` with the prompt embeddings. `call`, when
    given, feeds a network that is not a U-Net (a DiT or PixArt transformer) as its pipeline feeds it.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 sigma_data: float = 0.5, timestep_map: str = "log", boundary_scaling: float | None = None,
                 call: TimestepCall | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unsupported prediction_type {prediction_type!r}; fewstep reads {', '.join(PREDICTION_TYPES)}")
        if timestep_map not in TIMESTEP_MAPS:
            raise ValueError(f"timestep_map must be one of {TIMESTEP_MAPS}, got {timestep_map!r}")
        self.network = unet
        self.call = call
        self.prediction_type = prediction_type
        self.sigma_data = float(sigma_data)
        self.timestep_map = timestep_map
        self.boundary_scaling = boundary_scaling
        sigmas = discrete_sigmas(alphas_cumprod)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_range = SigmaRange(float(sigmas.min()), float(sigmas.max()), discrete=sigmas.float())
        self.num_classes = int(getattr(unet.config, "num_class_embeds", None) or 0)
        self.text_conditioned = getattr(unet.config, "cross_attention_dim", None) is not None

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep by interpolation in log(sigma) (or sigma); a trained sigma maps to its integer t exactly."""
        log_sigma = sigma.double().clamp(self.sigma_range.sigma_min, self.sigma_range.sigma_max).log()
        table = self.log_sigmas.to(sigma.device)
        hi = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        lo = hi - 1
        if self.timestep_map == "linear":
            w = (log_sigma.exp() - table[lo].exp()) / (table[hi].exp() - table[lo].exp())
        else:
            w = (log_sigma - table[lo]) / (table[hi] - table[lo])
        t = lo.double() + w
        t = t.round() if self.timestep_map == "round" else t
        return torch.where((t - t.round()).abs() < 1e-4, t.round(), t).float()

    def network_inputs(self, cond: Cond, device: torch.device) -> dict[str, Any]:
        """The network's keyword inputs for a condition: class labels, or prompt embeddings and added conditions."""
        if not self.text_conditioned:
            if isinstance(cond, TextCond) and cond.text is not None:
                raise UserError("a prompt was given, but this model has no text encoder; it takes "
                                + ("class labels" if self.num_classes else "no condition"))
            labels = labels_of(cond)
            return {"class_labels": None if labels is None else labels.to(device)}
        if not isinstance(cond, TextCond) or cond.text is None:
            given = "no prompt" if cond is None else "class labels" if labels_of(cond) is not None else "no prompt"
            raise UserError(f"this model is conditioned on text prompts, but {given} was given; "
                            "condition it on model.encode_prompts([...])")
        inputs: dict[str, Any] = {"encoder_hidden_states": cond.text.to(device)}
        if cond.mask is not None:
            inputs["encoder_attention_mask"] = cond.mask.to(device)
        added = {k: v.to(device) for k, v in cond.added.items()}
        if cond.pooled is not None:
            added["text_embeds"] = cond.pooled.to(device)  # SDXL's added "text_time" condition
        if added:
            inputs["added_cond_kwargs"] = added
        if cond.labels is not None:
            inputs["class_labels"] = cond.labels.to(device)
        return inputs

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        sigma = as_sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim).double()
        sqrt_a, sqrt_1ma = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()
        x_t = (x.double() * sqrt_a).float()
        t = self.sigma_to_t(sigma)
        if self.call is not None:
            out = self.call(self.network, x_t, t, cond).double()
        else:
            out = self.network(x_t, t, **self.network_inputs(cond, x.device)).sample.double()
        if self.prediction_type == "epsilon":
            denoised = x.double() - s * out
        elif self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) y  =>  y = sqrt(a) x_t - sqrt(1-a) v
            denoised = sqrt_a * x_t.double() - sqrt_1ma * out
        else:
            denoised = out
        if self.boundary_scaling is not None:  # LCM: c_skip x_t + c_out y, c_skip = sd^2/(u^2 + sd^2), c_out = u/sqrt(.)
            u2 = append_dims(t.double() * self.boundary_scaling, x.ndim) ** 2
            denoised = (LCM_SIGMA_DATA**2 * x_t.double() + (u2 * (u2 + LCM_SIGMA_DATA**2)).sqrt() * denoised) / (
                u2 + LCM_SIGMA_DATA**2)
        return denoised.float()

    def init_noise_scale(self, sigma_max: torch.Tensor) -> torch.Tensor:
        """A VP model starts from unit-variance x_T, i.e. std sqrt(1 + sigma^2) in EDM coordinates."""
        return (1 + torch.as_tensor(sigma_max) ** 2).sqrt()
