"""Teacher agreement: how far a method's samples land from the teacher's, started from the same initial noise."""

from __future__ import annotations

import torch

from fewstep.metrics.features import FeatureNet
from fewstep.metrics.persample import SampleMean


def _squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.detach().cpu().double() - b.detach().cpu().double()).square()


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _squared_error(a, b).flatten(1).mean(1)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference over every element of two paired tensors."""
    return float(_squared_error(a, b).mean().sqrt())


def agreement_terms(samples: torch.Tensor, teacher_samples: torch.Tensor,
                    net: FeatureNet | None = None) -> dict[str, SampleMean]:
    """Per-sample terms of agreement_rmse (data space) and, with net, agreement_feature_rmse (its feature space)."""
    out = {"agreement_rmse": SampleMean(_per_sample_mse(samples, teacher_samples), root=True)}
    if net is not None:
        out["agreement_feature_rmse"] = SampleMean(
            _per_sample_mse(net.features(samples), net.features(teacher_samples)), root=True)
    return out


def teacher_agreement(samples: torch.Tensor, teacher_samples: torch.Tensor,
                      net: FeatureNet | None = None) -> dict[str, float]:
    """agreement_rmse in data space, and agreement_feature_rmse in the feature network's space when net is given.

    Row i of both tensors must come from the same seeded initial noise (same seed, same sample index).
    """
    return {k: t.estimate() for k, t in agreement_terms(samples, teacher_samples, net).items()}
