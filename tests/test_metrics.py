"""Image metrics: the digits feature network, Fréchet distance, precision / recall, accuracy, floors, agreement."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.core.errors import UserError
from fewstep.data import load_dataset
from fewstep.data.base import Dataset
from fewstep.metrics import (cache_dir, evaluate_samples, feature_network, frechet_distance,
                             precision_recall, real_split, teacher_agreement, ties)
from fewstep.metrics import features as features_module
from fewstep.metrics.image import real_images

N = 360  # the size of the digits test split


@pytest.fixture(scope="session")
def digits():
    """The digits set and its feature network (the real setting), trained once per session into the test cache."""
    data = load_dataset("digits")
    yield data, feature_network(data)


def noisy(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def test_feature_network_classifies_digits_and_is_cached(digits, monkeypatch):
    data, net = digits
    assert net.test_accuracy >= 0.97
    record = json.loads(next((cache_dir() / "features").glob("digits-*.json")).read_text())
    assert record["hash"] == net.settings_hash and record["test_accuracy"] == net.test_accuracy
    monkeypatch.setattr(features_module, "train_network", lambda *a: pytest.fail("retrained despite the cache"))
    again = feature_network(data)
    assert torch.equal(again.features(data.test), net.features(data.test))
    assert net.features(data.test[:5]).shape == (5, 128) and net.logits(data.test[:5]).shape == (5, 10)


def test_unlabelled_or_vector_data_has_no_feature_metrics(digits):
    data, _ = digits
    unlabelled = Dataset("plain", "image", data.train, data.test)
    with pytest.raises(UserError, match="no class labels.*fd, precision"):
        feature_network(unlabelled)
    with pytest.raises(UserError, match="no class labels"):
        evaluate_samples(unlabelled, data.test)
    with pytest.raises(UserError, match="not an image dataset"):
        feature_network(load_dataset("8gaussians"))


def test_frechet_distance_of_a_set_with_itself_is_zero(digits):
    data, net = digits
    f = net.features(data.test)
    assert abs(frechet_distance(f, f)) < 1e-6 * frechet_distance(f, net.features(noisy(data.test, 0.5)))


def test_fd_grows_with_noise_and_the_floor_is_below_it(digits):
    data, _ = digits
    images, _ = real_images(data)
    held_out = images[real_split(len(images), N).held_out]  # the floor's real stand-in for the samples
    rows = [evaluate_samples(data, noisy(held_out, std)) for std in (0.0, 0.1, 0.2, 0.4)]
    fds = [r["fd"] for r in rows]
    assert fds[0] == rows[0]["fd_floor"] and rows[0]["precision"] == rows[0]["precision_floor"]
    assert fds == sorted(fds) and len(set(fds)) == 4
    assert rows[0]["n"] == rows[0]["n_ref"] == rows[0]["floor_n"] == N
    assert ties(rows[1], rows[3])["fd"] is False and rows[0]["fd_lo"] <= fds[0] <= rows[0]["fd_hi"]


def test_precision_recall_of_real_and_of_a_collapsed_set(digits):
    data, net = digits
    real, other = net.features(data.test), net.features(data.train[:N])
    precision, recall = precision_recall(other, real)
    assert precision > 0.7 and recall > 0.7
    precision, recall = precision_recall(real[:1].expand(N, -1), real)
    assert precision == 1.0 and recall < 0.05


def test_accuracy_and_floors_of_class_conditional_samples(digits):
    data, _ = digits
    row = evaluate_samples(data, data.test, data.test_labels)
    assert row["accuracy"] >= 0.97 and row["confidence"] > 0.9 and row["accuracy_floor"] >= 0.95
    assert evaluate_samples(data, data.test, (data.test_labels + 1) % 10)["accuracy"] < 0.1
    unconditional = evaluate_samples(data, data.test)
    assert "accuracy" not in unconditional and "accuracy_floor" not in unconditional
    assert row == evaluate_samples(data, data.test, data.test_labels)  # deterministic
    assert row["precision_floor"] > 0.7 and row["recall_floor"] > 0.7


def test_evaluate_with_a_small_sample_and_a_large_reference(digits):
    data, _ = digits
    row = evaluate_samples(data, data.test[:100], n_ref=1000)
    assert (row["n"], row["n_ref"], row["floor_n"]) == (100, 1000, 100)
    with pytest.raises(UserError, match="n_ref"):
        evaluate_samples(data, data.test[:100], n_ref=5000)
    with pytest.raises(UserError, match="do not match"):
        evaluate_samples(data, data.test[:, :, :4])


def test_teacher_agreement_in_data_and_feature_space(digits):
    data, net = digits
    x = data.test[:50]
    assert teacher_agreement(x, x, net) == {"agreement_rmse": 0.0, "agreement_feature_rmse": 0.0}
    shifted = teacher_agreement(x - 0.1, x, net)
    assert shifted["agreement_rmse"] == pytest.approx(0.1) and shifted["agreement_feature_rmse"] > 0
    row = evaluate_samples(data, x, teacher_samples=noisy(x, 0.2))
    assert row["agreement_rmse"] == pytest.approx(0.2, rel=0.1)


@pytest.mark.parametrize("n_a, n_b, dim", [(40, 55, 300), (600, 500, 64)])
def test_frechet_distance_equals_torchmetrics(n_a, n_b, dim):
    """Both paths (n < dim: the n x n problem; n >= dim: covariances) equal torchmetrics' FID formula."""
    from torchmetrics.image.fid import _compute_fid

    from fewstep.metrics.image import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n_a, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n_b, dim, generator=g, dtype=torch.float64) * 1.3 + 0.2
    full = float(_compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)))
    assert frechet_distance(a, b) == pytest.approx(full, rel=1e-6)
