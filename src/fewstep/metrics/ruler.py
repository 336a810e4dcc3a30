"""The ruler on one set of samples: every applicable quality metric, its interval and its floor, as one
flat dict (evaluate_samples)."""

from __future__ import annotations

import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.agreement import agreement_terms
from fewstep.metrics.features import feature_network
from fewstep.metrics.floor import MIN_SAMPLES, image_floor, real_split, toy_floor, toy_reference
from fewstep.metrics.image import class_terms, image_quality, reference_features
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.toy import log_density_terms, toy_quality
from fewstep.metrics.uncertainty import image_uncertainty, toy_uncertainty


def evaluate_samples(data: Dataset, samples: torch.Tensor, labels: torch.Tensor | None = None,
                     teacher_samples: torch.Tensor | None = None, n_ref: int | None = None) -> dict:
    """Quality (and teacher agreement) of samples against data, with intervals (fewstep.metrics.uncertainty)
    and floors at the same n; deterministic."""
    samples = samples.detach().cpu()
    teacher_samples = None if teacher_samples is None else teacher_samples.detach().cpu()
    n = len(samples)
    if n < MIN_SAMPLES:
        raise UserError(f"evaluating needs at least {MIN_SAMPLES} samples, got {n}")
    if tuple(samples.shape[1:]) != data.shape:
        raise UserError(f"samples of shape {tuple(samples.shape[1:])} do not match {data.name}'s {data.shape}")
    if labels is not None and len(labels) != n:
        raise UserError(f"got {len(labels)} labels for {n} samples")
    if data.kind == "vector":
        reference = toy_reference(data, n, n_ref)
        terms = agreement_terms(samples, teacher_samples) if teacher_samples is not None else {}
        quality = {**toy_quality(data, samples, reference), **_estimates(terms)}
        terms.update(log_density_terms(data, samples) if data.log_density is not None else {})
        return {"n": n, "n_ref": len(reference), **quality, **toy_floor(data, n, n_ref),
                **toy_uncertainty(samples, reference, quality, terms, data.centres)}
    net = feature_network(data)
    split = real_split(len(data.train) + len(data.test), n, n_ref)
    features, reference = net.features(samples), reference_features(data, net)[split.reference]
    out = {"n": n, "n_ref": len(split.reference), "feature_net": net.settings_hash,
           **image_quality(features, reference), **image_floor(data, net, n, n_ref)}
    terms = {}
    if labels is None:  # unconditional samples: no requested class to check
        del out["accuracy_floor"], out["confidence_floor"]
    else:
        terms = class_terms(net.logits(samples), labels)
    if teacher_samples is not None:
        terms.update(agreement_terms(samples, teacher_samples, net))
    out.update(_estimates(terms))
    return {**out, **image_uncertainty(features, reference, out, terms)}


def _estimates(terms: dict[str, SampleMean]) -> dict[str, float]:
    return {k: t.estimate() for k, t in terms.items()}
