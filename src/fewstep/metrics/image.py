"""Image quality in the feature network's space: Fréchet distance, improved precision / recall, class accuracy."""

from __future__ import annotations

import torch

from fewstep.data.base import Dataset
from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically
from fewstep.metrics.features import FeatureNet
from fewstep.metrics.persample import SampleMean

DEFAULT_K = 3  # Kynkäänniemi et al. 2019 use k = 3
DISTANCE_CHUNK = 2048


def _trace_sqrt_product(s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """Tr (S_a S_b)^(1/2) for covariances: the eigenvalues of S_a S_b are those of the symmetric S_a^(1/2) S_b S_a^(1/2)."""
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    return torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to two feature sets, in float64.

    With fewer samples than feature dimensions the trace comes from an n x n problem instead (same value, far
    cheaper for 2048-d features).
    """
    a, b = a.double(), b.double()
    ac, bc = a - a.mean(0), b - b.mean(0)
    trace = (ac**2).sum() / (len(a) - 1) + (bc**2).sum() / (len(b) - 1)
    if max(len(a), len(b)) >= a.shape[1]:
        trace_sqrt = _trace_sqrt_product(torch.cov(a.T), torch.cov(b.T))
    else:  # eig(S_a S_b) \ {0} = eig(M M^T) / k, M = A_c B_c^T, k = (n_a - 1)(n_b - 1): Tr sqrt = sum of M's singular values
        trace_sqrt = torch.linalg.svdvals(ac @ bc.T).sum() / ((len(a) - 1) * (len(b) - 1)) ** 0.5
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + trace - 2 * trace_sqrt)


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (no matrix-product shortcut, so duplicates are at distance 0)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    return torch.cat([_distances(x[lo:lo + DISTANCE_CHUNK], x).kthvalue(k + 1, dim=1).values
                      for lo in range(0, len(x), DISTANCE_CHUNK)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Per point: is it inside at least one ball (centre_i, radius_i)?"""
    return torch.cat([(_distances(points[lo:lo + DISTANCE_CHUNK], centres) <= radii).any(1)
                      for lo in range(0, len(points), DISTANCE_CHUNK)])


def manifold_hits(fake: torch.Tensor, real: torch.Tensor, k: int = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fake point: inside the real manifold? Per real point: inside the fake one? (precision's and recall's terms)"""
    fake, real = fake.double(), real.double()
    return _inside(fake, real, _knn_radii(real, k)), _inside(real, fake, _knn_radii(fake, k))


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = DEFAULT_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): manifolds as unions of k-NN balls.

    precision = fraction of fake features inside the real manifold; recall = fraction of real inside the fake one.
    """
    precision_hits, recall_hits = manifold_hits(fake, real, k)
    return float(precision_hits.double().mean()), float(recall_hits.double().mean())


def class_terms(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, SampleMean]:
    """Per-sample terms of accuracy (the top class is the requested label) and confidence (top-class probability)."""
    logits = logits.detach().cpu()
    return {"accuracy": SampleMean(logits.argmax(1) == labels.cpu()),
            "confidence": SampleMean(logits.double().softmax(1).amax(1))}


def class_agreement(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy of the classifier on the requested labels, and its mean top-class softmax probability."""
    terms = class_terms(logits, labels)
    return terms["accuracy"].estimate(), terms["confidence"].estimate()


def class_coverage(predicted: torch.Tensor, wanted: torch.Tensor) -> float:
    """Share of classes (with wanted count > 0) predicted at least half as often as wanted: lost classes lower it."""
    got = torch.bincount(predicted.cpu(), minlength=len(wanted)).double()
    present = wanted > 0
    return float((got[present] >= 0.5 * wanted[present].double()).double().mean())


def image_quality(features: torch.Tensor, reference: torch.Tensor, k: int = DEFAULT_K) -> dict[str, float]:
    """fd, precision and recall of a feature set against reference features of real data."""
    precision, recall = precision_recall(features, reference, k)
    return {"fd": frechet_distance(features, reference), "precision": precision, "recall": recall}


def real_images(data: Dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All real images (train then test) and their labels: the pool references and floors are drawn from."""
    labels = None if data.train_labels is None else torch.cat([data.train_labels, data.test_labels])
    return torch.cat([data.train, data.test]), labels


def reference_features(data: Dataset, net: FeatureNet) -> torch.Tensor:
    """Features of real_images(data), computed once per (feature network, data) and cached as safetensors."""
    from safetensors.torch import load_file, save_file

    images, _ = real_images(data)
    digest = settings_hash({"network": net.settings_hash, "real": tensor_digest(images)})
    path = cache_path("reference", data.name, digest, ".safetensors")
    if path.exists():
        return load_file(path)["features"]
    features = net.features(images)
    write_atomically(path, lambda tmp: save_file({"features": features}, str(tmp), metadata={"hash": digest}))
    return features
