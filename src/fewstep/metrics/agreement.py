"""Teacher agreement: how far a method's samples land from the teacher's, started from the same initial noise."""

from __future__ import annotations

import torch

from fewstep.metrics.features import FeatureNet


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference over every element of two paired tensors."""
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.double() - b.double()).square().mean().sqrt())


def teacher_agreement(samples: torch.Tensor, teacher_samples: torch.Tensor,
                      net: FeatureNet | None = None) -> dict[str, float]:
    """agreement_rmse in data space, and agreement_feature_rmse in the feature network's space when net is given.

    Row i of both tensors must come from the same seeded initial noise (same seed, same sample index).
    """
    out = {"agreement_rmse": rmse(samples, teacher_samples)}
    if net is not None:
        out["agreement_feature_rmse"] = rmse(net.features(samples), net.features(teacher_samples))
    return out
