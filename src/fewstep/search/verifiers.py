"""Verifiers: networks or functions that score samples (higher is better) for search, by name or module path.

A verifier is anything with `score(samples, request) -> Tensor[n]` and `flops_per_sample`; `request` is what the
user asked for (class labels, a list of captions, or None). The ruler's own networks must not grade search: the
built-in `classifier` is a copy of the ruler's feature network trained with another seed (seed 1; the ruler is seed
0), and every row says whether the verifier it searched with is independent of the ruler (`ruler_independent`).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from fewstep.accel.base import parse_spec
from fewstep.config import build_config, option
from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.cost import count_flops
from fewstep.metrics.features import FeatureConfig, feature_network

RULER_SEED = FeatureConfig().seed  # the seed of the feature network the ruler measures with
PROBE = 4  # samples on which a verifier's FLOPs per sample are counted


@runtime_checkable
class Verifier(Protocol):
    """Scores samples for their request: one finite number per sample, higher is better."""

    name: str
    flops_per_sample: float
    ruler_independent: bool

    def score(self, samples: torch.Tensor, request: Any) -> torch.Tensor: ...


def _probe_flops(score: Callable[[torch.Tensor, Any], torch.Tensor], shape: tuple[int, ...], request: Any) -> float:
    """FLOPs per sample of one score() call, counted on PROBE zero samples."""
    return count_flops(lambda: score(torch.zeros(PROBE, *shape), request)) / PROBE


@dataclass
class ClassifierConfig:
    """The digits-style classifier verifier."""

    seed: int = option(1, "training seed of the classifier (the ruler's is 0: another seed keeps it independent)")
    steps: int = option(FeatureConfig().steps, "training steps (the ruler's recipe by default)")


class ClassifierVerifier:
    """log p(requested class | sample) under a feature network trained by fewstep with its own seed."""

    def __init__(self, data: Dataset, config: ClassifierConfig):
        self.net = feature_network(data, FeatureConfig(seed=config.seed, steps=config.steps))
        recipe = "" if config.steps == FeatureConfig().steps else f",steps={config.steps}"
        self.name = f"classifier:seed={config.seed}{recipe}"
        self.ruler_independent = config.seed != RULER_SEED  # another initialisation, batch order and augmentation
        self.flops_per_sample = _probe_flops(self.score, data.shape, torch.zeros(PROBE, dtype=torch.long))

    def score(self, samples: torch.Tensor, request: Any) -> torch.Tensor:
        if request is None or not isinstance(request, torch.Tensor):
            raise UserError("the classifier verifier scores class-conditional samples; this request has no labels")
        logp = self.net.logits(samples).log_softmax(1)
        return logp.gather(1, request.long().cpu().view(-1, 1)).squeeze(1)


@dataclass
class DensityConfig:
    """The 2-D density verifier."""

    bandwidth: float = option(0.0, "KDE bandwidth in data units (0 = exact log p when the dataset knows it, else "
                                   "Scott's rule on the training data)")


class DensityVerifier:
    """log p(x): the dataset's exact density where known, else a Gaussian KDE of its training points."""

    def __init__(self, data: Dataset, config: DensityConfig):
        if data.kind != "vector":
            raise UserError(f"the density verifier scores 2-D samples; {data.name} is an image set (use classifier)")
        self.exact = data.log_density if config.bandwidth == 0 and data.log_density is not None else None
        self.points = data.train.double()
        n, d = self.points.shape
        self.bandwidth = config.bandwidth or float(self.points.std(0).mean()) * n ** (-1 / (d + 4))  # Scott's rule
        self.name = "density:exact" if self.exact else f"density:bandwidth={self.bandwidth:.4g}"
        self.ruler_independent = self.exact is None  # the ruler's logp uses the exact density
        self.flops_per_sample = _probe_flops(self.score, data.shape, None)

    def score(self, samples: torch.Tensor, request: Any) -> torch.Tensor:
        x = samples.double().cpu()
        if self.exact is not None:
            return self.exact(x.float()).double().clamp_min(-1e4)  # p = 0 (off a checkerboard) scores very low
        # ||x - y||^2 by a matmul, so the FLOP counter sees the KDE's cost
        d2 = x.square().sum(1, keepdim=True) + self.points.square().sum(1) - 2 * x @ self.points.T
        h2, d = self.bandwidth ** 2, x.shape[1]
        norm = math.log(len(self.points)) + d / 2 * math.log(2 * math.pi * h2)
        return torch.logsumexp(-d2.clamp_min(0) / (2 * h2), 1) - norm


@dataclass
class CaptionsConfig:
    """The captions attribute verifier."""

    seed: int = option(1, "training seed of the attribute network (the captions ruler's is 0)")
    steps: int = option(1500, "training steps (the ruler's recipe by default)")
    n_train: int = option(20000, "training renders (the ruler's recipe by default)")


class CaptionsVerifier:
    """Sum over a caption's stated attributes of log p(attribute) under the captions attribute network
    (metrics/captions.py) trained with its own seed; the request is the list of captions."""

    def __init__(self, data: Dataset, config: CaptionsConfig):
        from fewstep.metrics.captions import AttributeConfig, attribute_network

        if data.kind != "image" or data.shape[0] != 3:
            raise UserError(f"the captions verifier scores RGB images of the captions grammar, not {data.name}")
        ruler = AttributeConfig()
        self.resolution = data.shape[-1]
        self.net = attribute_network(self.resolution, AttributeConfig(seed=config.seed, steps=config.steps,
                                                                     n_train=config.n_train))
        self.name = f"captions:seed={config.seed}" + ("" if (config.steps, config.n_train) == (
            ruler.steps, ruler.n_train) else f",steps={config.steps},n_train={config.n_train}")
        self.ruler_independent = config.seed != ruler.seed
        self.flops_per_sample = count_flops(lambda: self.net.logits(torch.zeros(PROBE, *data.shape))) / PROBE

    def score(self, samples: torch.Tensor, request: Any) -> torch.Tensor:
        from fewstep.data.captions import caption_attributes
        from fewstep.metrics.captions import HEADS

        if not isinstance(request, (list, tuple)) or not all(isinstance(c, str) for c in request):
            raise UserError("the captions verifier needs one caption per sample as its request")
        wanted = caption_attributes(list(request))
        if samples.shape[-1] != self.resolution:  # a pipeline's decoded images, read as the captions ruler reads them
            samples = F.interpolate(samples, size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                                    align_corners=False)
        total = torch.zeros(len(samples), dtype=torch.float64)
        for column, logits in enumerate(self.net.logits(samples).split(HEADS, 1)):
            stated = wanted[:, column] >= 0
            logp = logits.double().log_softmax(1).gather(1, wanted[:, column].clamp_min(0).view(-1, 1)).squeeze(1)
            total += torch.where(stated, logp, torch.zeros_like(logp))
        return total


class FunctionVerifier:
    """A user's `score(samples, request)` function; its FLOPs are what its `flops_per_sample` attribute says (the
    search's total FLOPs count it in any case)."""

    def __init__(self, fn: Callable[[torch.Tensor, Any], torch.Tensor], name: str):
        self.fn, self.name, self.ruler_independent = fn, name, True
        self.flops_per_sample = float(getattr(fn, "flops_per_sample", 0.0))

    def score(self, samples: torch.Tensor, request: Any) -> torch.Tensor:
        return self.fn(samples, request)


VERIFIERS: dict[str, tuple[type, Callable[[Dataset, Any], Verifier], str]] = {
    "classifier": (ClassifierConfig, ClassifierVerifier, "labelled images: log p(requested class) under a "
                                                        "separately seeded copy of the ruler's feature network"),
    "density": (DensityConfig, DensityVerifier, "2-D: exact log p where known, else a KDE of the training data"),
    "captions": (CaptionsConfig, CaptionsVerifier, "captioned scenes: log p of every stated attribute under a "
                                                   "separately seeded attribute network"),
}


def _import_function(path: str) -> Callable:
    module_name, _, attr = path.rpartition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot load the verifier {path!r} ({e}); write module.path:function") from None
    if not callable(fn):
        raise UserError(f"the verifier {path!r} is not callable")
    return fn


def build_verifier(spec: str | Verifier | Callable, data: Dataset | None) -> Verifier:
    """A verifier from 'classifier:seed=1', 'density', 'module.path:function', a Verifier or a plain function."""
    if isinstance(spec, Verifier):
        return spec
    if callable(spec):
        return FunctionVerifier(spec, getattr(spec, "__name__", "function"))
    head, _, tail = spec.strip().partition(":")
    if head not in VERIFIERS and tail and "=" not in tail:  # module.path:function
        return FunctionVerifier(_import_function(spec.strip()), spec.strip())
    name, settings = parse_spec(spec)
    if name in VERIFIERS:
        config_cls, cls, _ = VERIFIERS[name]
        if data is None:
            raise UserError(f"the {name} verifier needs the model's dataset; pass --dataset")
        return cls(data, build_config(config_cls, settings, where=f"verifier {name}"))
    raise UserError(f"unknown verifier {name!r}; choose one of {', '.join(VERIFIERS)} or give module.path:function")


def checked_scores(verifier: Verifier, samples: torch.Tensor, request: Any) -> torch.Tensor:
    """verifier.score, refused in one line unless it is a finite float vector with one entry per sample."""
    scores = verifier.score(samples, request)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(samples),):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise UserError(f"verifier {verifier.name} must return one score per sample (shape ({len(samples)},)), "
                        f"got {got}")
    if not torch.isfinite(scores).all():
        raise UserError(f"verifier {verifier.name} returned {int((~torch.isfinite(scores)).sum())} non-finite "
                        "scores (NaN or inf); it must give every sample a finite score")
    return scores.detach().double().cpu()
