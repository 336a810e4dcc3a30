"""Standard Inception FID: pytorch-fid's key names, safetensors-only loading, FID's behaviour, `eval --inception`.

The real weights cannot be downloaded here, so the network runs on random (He-initialised) weights: these tests
check the architecture's names and shapes, the loading rules and the wiring, not the published FID values.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.metrics.cache import cache_dir
from fewstep.metrics.inception import InceptionFeatures, inception_features, inception_fid, load_inception

# Checked against mseitzer/pytorch-fid src/pytorch_fid/inception.py (fid_inception_v3: torchvision's Inception3,
# num_classes=1008, aux_logits=False, with FIDInceptionA/C/E_1/E_2) and torchvision/models/inception.py.
NUM_CONV_BN = 94  # BasicConv2d layers: stem 5, 3 x A 7, B 4, 4 x C 10, D 6, 2 x E 9
NUM_KEYS = 5 * NUM_CONV_BN + 2  # conv.weight, bn.{weight,bias,running_mean,running_var} each, and fc.{weight,bias}
NUM_PARAMETERS = 23_850_960  # torchvision's inception_v3 (27,161,264) without AuxLogits, with 1008 classes
SAMPLE_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_2b_3x3.bn.running_var": (64,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.bn.running_mean": (64,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.bn.bias": (192,),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def random_state() -> dict[str, torch.Tensor]:
    """Seeded He-initialised weights (default init shrinks activations to ~1e-8 over 94 layers), keyed as the file.

    Like pytorch-fid's converted TensorFlow weights, without BatchNorm's num_batches_tracked counters.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = InceptionFeatures()
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file(random_state(), str(path))
    return path


@pytest.fixture(scope="module")
def net(weights):
    return load_inception(weights)


def images(n: int, seed: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_keys_and_shapes_are_pytorch_fids():
    state = InceptionFeatures().state_dict()
    counters = [k for k in state if k.endswith(".num_batches_tracked")]
    keys = set(state) - set(counters)
    assert len(keys) == NUM_KEYS == 472 and len(counters) == NUM_CONV_BN
    assert {k: tuple(state[k].shape) for k in SAMPLE_SHAPES} == SAMPLE_SHAPES
    assert not any(k.startswith("AuxLogits") for k in state)
    assert sum(p.numel() for p in InceptionFeatures().parameters()) == NUM_PARAMETERS


def test_features_are_2048_d_and_follow_pytorch_fids_preprocessing(net):
    x = images(3, seed=0)
    f = inception_features(x, net, cache=False)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and f.std() > 0.01
    # grayscale is repeated to RGB; [0, 1] input with the flag is the same picture as [-1, 1] input
    assert torch.allclose(f, inception_features(x.expand(-1, 3, -1, -1), net, cache=False))
    assert torch.allclose(f, inception_features((x + 1) / 2, net, zero_to_one=True, cache=False))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert len(net.weights_hash) == 16


@pytest.mark.slow
def test_fid_is_zero_against_itself_and_grows_with_a_shift(net, weights):
    a = images(8, seed=1, channels=3, size=16)
    same = inception_fid(a, a, net)
    shifted = inception_fid(a, (a + 0.5).clamp(-1, 1), weights)  # from the path: the same weights, the same hash
    assert abs(same) < 1e-3 * shifted and shifted > 0
    assert len(list((cache_dir() / "inception").glob("features-*.safetensors"))) >= 2


def test_missing_key_or_pth_file_is_a_one_line_user_error(tmp_path):
    state = random_state()
    del state["Mixed_6c.branch1x1.conv.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match="1 missing keys \\(Mixed_6c.branch1x1.conv.weight\\), 0 unexpected") as e:
        load_inception(tmp_path / "missing.safetensors")
    assert "\n" not in str(e.value)
    torch.save({"fc.bias": torch.zeros(1008)}, tmp_path / "pt_inception.pth")
    with pytest.raises(UserError, match="not a safetensors file") as e:
        load_inception(tmp_path / "pt_inception.pth")
    assert "\n" not in str(e.value)


def test_eval_inception_pth_exits_2_before_sampling(tiny_teacher, tmp_path, capsys):
    torch.save({"fc.bias": torch.zeros(1008)}, tmp_path / "w.pth")
    assert main(["eval", "--model", str(tiny_teacher), "--inception", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a safetensors file" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_eval_inception_adds_fid_inception_to_the_row(tiny_teacher, weights, net, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_teacher), "--n", "8", "--steps", "2", "--no-agreement",
                 "--timing-batch", "4", "--inception", str(weights), "--json", "--results", str(tmp_path / "r.jsonl")])
    assert code == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["fid_inception"] > 0 and math.isfinite(row["fid_inception_floor"]) and row["fid_inception_floor"] > 0
    assert row["fid_inception_lo"] <= row["fid_inception"] <= row["fid_inception_hi"]  # the jackknife's, as fd's
    assert {"fd", "fid_inception"} <= set(row["jackknife"]) and len(row["jackknife"]["fid_inception"][0]) == 8
    assert row["inception_weights"] == net.weights_hash and row["inception"] == str(weights)
    assert row["n"] == 8 and row["floor_n"] == 8
