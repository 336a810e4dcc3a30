"""Noise floors: each metric with real data in place of the samples, at the same sample size (context for a row;
ties are decided by intervals, fewstep.metrics.uncertainty)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.features import FeatureNet
from fewstep.metrics.image import DEFAULT_K, class_agreement, image_quality, real_images, reference_features
from fewstep.metrics.toy import fresh_samples, toy_quality

MIN_SAMPLES = DEFAULT_K + 1  # k-NN radii need k other points; a covariance needs two
SPLIT_SEED = 0  # fixed permutation of the real image pool
REFERENCE_SEED, FLOOR_SEED = 1001, 1002  # fresh 2-D draws; distinct from load_toy's train/test seed 0

# The value a perfect method would reach.
IDEAL = {"fd": 0.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0, "confidence": 1.0,
         "sw2": 0.0, "mmd": 0.0, "logp_finite": 1.0, "fid_inception": 0.0, "agreement_rmse": 0.0,
         "modes_covered": 1.0, "worst_mode_ratio": 1.0, "off_mode": 0.0,
         **{f"{k}_accuracy": 1.0 for k in ("prompt", "count", "layout", "shape", "colour", "size")}}


@dataclass(frozen=True)
class RealSplit:
    """Disjoint indices into the real pool: the reference set samples are compared with, and the floor's stand-in."""

    reference: torch.Tensor
    held_out: torch.Tensor


def real_split(pool_size: int, n: int, n_ref: int | None = None) -> RealSplit:
    """Reference of n_ref (default min(n, pool/2)) and held-out of min(n, what is left), from a fixed permutation."""
    n_ref = n_ref or min(n, pool_size // 2)
    if not MIN_SAMPLES <= n_ref <= pool_size - MIN_SAMPLES:
        raise UserError(f"n_ref must be between {MIN_SAMPLES} and {pool_size - MIN_SAMPLES} "
                        f"(the real pool holds {pool_size}), got {n_ref}")
    order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return RealSplit(order[:n_ref], order[n_ref:n_ref + min(n, pool_size - n_ref)])


def image_floor(data: Dataset, net: FeatureNet, n: int, n_ref: int | None = None) -> dict[str, float]:
    """fd, precision, recall, accuracy and confidence of held-out real images against the reference set."""
    split = real_split(len(data.train) + len(data.test), n, n_ref)
    pool = reference_features(data, net)
    images, labels = real_images(data)
    floor = image_quality(pool[split.held_out], pool[split.reference])
    floor["accuracy"], floor["confidence"] = class_agreement(net.logits(images[split.held_out]), labels[split.held_out])
    return {**{f"{k}_floor": v for k, v in floor.items()}, "floor_n": len(split.held_out)}


def _real_points(data: Dataset, n: int, n_ref: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference, floor stand-in) of vector data: fresh draws of the true law where it is known, else disjoint
    rows of the data's own points (train then test), as for images."""
    if data.sampler is not None:
        return fresh_samples(data, n_ref or n, REFERENCE_SEED), fresh_samples(data, n, FLOOR_SEED)
    pool = real_images(data)[0]
    split = real_split(len(pool), n, n_ref)
    return pool[split.reference], pool[split.held_out]


def toy_reference(data: Dataset, n: int, n_ref: int | None = None) -> torch.Tensor:
    """The real points that n samples are compared with."""
    return _real_points(data, n, n_ref)[0]


def toy_floor(data: Dataset, n: int, n_ref: int | None = None) -> dict[str, float]:
    """Every 2-D metric of real points in place of the samples, against the same reference as the samples."""
    reference, stand_in = _real_points(data, n, n_ref)
    floor = toy_quality(data, stand_in, reference)
    return {**{f"{k}_floor": v for k, v in floor.items()}, "floor_n": len(stand_in)}
