"""Built-in datasets: shapes, ranges, labels, fixed splits and exact 2-D densities."""

import math

import pytest
import torch
from PIL import Image

from fewstep.core.errors import UserError
from fewstep.data import load_dataset
from fewstep.data.toy2d import TOY_SETS


def test_digits_fixed_split():
    d = load_dataset("digits")
    assert d.train.shape == (1437, 1, 8, 8) and d.test.shape == (360, 1, 8, 8) and d.num_classes == 10
    assert d.train.min() == -1 and d.train.max() == 1
    assert torch.equal(d.test_labels.bincount(), load_dataset("digits").test_labels.bincount())
    assert d.test_labels.bincount().min() >= 35  # stratified


@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_density_integrates_to_one_and_matches_samples(name):
    d = load_dataset(name)
    assert d.train.shape == (20000, 2)
    grid = torch.linspace(-5, 5, 201)  # spacing 0.05: a Riemann sum is exact to <1e-3 for std-0.1 Gaussians
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    p = d.log_density(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(float(p.sum()) * (10 / 200) ** 2 - 1) < 0.02
    fresh = d.sampler(5000, torch.Generator().manual_seed(1))
    shifted = fresh + 1.0
    assert d.log_density(fresh).mean() > d.log_density(shifted).clamp(min=-50).mean() + 0.5


def test_ring_density_is_exact_at_a_center():
    d = load_dataset("8gaussians")
    expected = -math.log(8) - math.log(2 * math.pi * 0.1**2)  # other modes contribute ~0 at a centre
    assert abs(d.log_density(torch.tensor([[2.0, 0.0]])).item() - expected) < 1e-4


def test_shapes_any_resolution_and_deterministic():
    a, b = load_dataset("shapes", 16), load_dataset("shapes", 16)
    assert a.train.shape == (4000, 3, 16, 16) and a.num_classes == 3
    assert torch.equal(a.train[:10], b.train[:10])
    assert a.train.min() >= -1 and a.train.max() <= 1


def test_folder_with_class_subfolders(tmp_path):
    for cls, colour in (("cats", "red"), ("dogs", "blue")):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (12, 10), colour).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}", resolution=8)
    assert d.num_classes == 2 and d.meta["classes"] == ["cats", "dogs"]
    assert d.train.shape[1:] == (3, 8, 8) and len(d.train) + len(d.test) == 10


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(UserError, match="notes.png: not a readable image"):
        load_dataset(f"folder:{tmp_path}")
