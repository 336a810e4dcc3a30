"""Offline fits a cache needs before it runs: `calibrate=true` in a cache spec becomes the values fitted on this model.

`fewstep accelerate --cache SPEC` fits them once, on one uncached run of the plan's own sampler, sigmas and guidance
(held-out seed 1000; class labels cycling, as the ruler samples, or a text-to-image model's prompt set), and records
the fitted spec: TeaCache's rescaling polynomial (fewstep.accel.teacache.calibrate) and diffusers MagCache's
magnitude ratios, from MagCache's own calibration mode (fewstep.accel.peers.magcache_ratios).
"""

from __future__ import annotations

from typing import Any

from fewstep.accel.base import parse_spec
from fewstep.config import BOOLEAN_WORDS


def wants_calibration(settings: dict[str, str]) -> bool:
    """Whether a spec's settings ask for an offline fit (calibrate=true)."""
    return BOOLEAN_WORDS.get(settings.get("calibrate", "").lower(), False)


def calibrated_spec(spec: str, model: Any, plan: Any, n: int = 8, prompts: str | None = None) -> str:
    """`spec` with calibrate=true replaced by what it fits on the LoadedModel `model` along `plan` (n samples;
    `prompts` as --prompts names it, a captions model's default: captions:seen); any other spec unchanged."""
    from fewstep.accel.adaptive_guidance import guided_denoiser
    from fewstep.accel.peers import magcache_ratios
    from fewstep.accel.teacache import TeaCacheConfig, calibrate
    from fewstep.sample import class_labels

    peer = spec.strip().startswith("peer:")
    name, settings = parse_spec(spec.strip()[len("peer:"):] if peer else spec)
    if (peer, name) not in ((False, "teacache"), (True, "diffusers-magcache")) or not wants_calibration(settings):
        return spec
    labels = class_labels(model, n, cycle=True)
    if model.prompt_encoder is not None:
        from fewstep.data.prompts import fit_prompts
        from fewstep.models.info import prompt_cond

        labels = prompt_cond(model, fit_prompts(prompts, model.info.dataset, n).prompts, n)
    denoiser = guided_denoiser(model.denoiser, plan.cfg_scale, plan.cfg_interval, plan.guidance)
    fit = dict(shape=model.info.shape, sigmas=plan.sigmas, sampler=plan.sampler, n=n, labels=labels)
    if name == "teacache":
        fitted = {"coefficients": calibrate(denoiser, **fit)}
        settings.setdefault("threshold", str(TeaCacheConfig.threshold))
    else:
        ratios = magcache_ratios(denoiser, **fit)
        fitted = {"num_inference_steps": len(ratios), "mag_ratios": ratios}
    kept = [f"{k}={v}" for k, v in settings.items() if k != "calibrate" and k not in fitted]
    written = [f"{k}=[{','.join(f'{v:.6g}' for v in value)}]" if isinstance(value, list) else f"{k}={value}"
               for k, value in fitted.items()]
    return ("peer:" if peer else "") + f"{name}:" + ",".join(kept + written)
