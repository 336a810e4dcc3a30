"""Standard FID: the Inception-v3 of the TensorFlow FID code, run on weights the user keeps on disk.

The network is pytorch-fid's FID Inception (mseitzer/pytorch-fid, src/pytorch_fid/inception.py: torchvision's
models/inception.py Inception3 with the blocks patched to match TensorFlow's inception-2015-12-05 graph), rebuilt
here in plain torch.nn with the same parameter names, so pytorch-fid's pt_inception-2015-12-05-6726825d.pth,
converted once to safetensors by the user (docs/metrics.md), loads as-is. fewstep never unpickles a file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically
from fewstep.metrics.floor import real_split
from fewstep.metrics.image import frechet_distance, real_images
from fewstep.metrics.uncertainty import jackknife_interval, jackknife_values

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TensorFlow graph's softmax has 1008 outputs (1000 ImageNet classes and 8 unused)
BATCH = 32  # images per forward pass; results do not depend on it
PREPROCESS_VERSION = 1  # bump when the preprocessing changes: it invalidates every cached feature set
log = logging.getLogger(__name__)


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm with TensorFlow's eps = 0.001, ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean (pytorch-fid's patch of torchvision)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and average-pooled 1x1 branches."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e): 1x1, factorised 7x7, double factorised 7x7 and average-pooled 1x1 branches."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = conv(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 3x3, factorised 7x7 then strided 3x3, and max-pool branches."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, 7c): 1x1, split 3x3, double split 3x3 and pooled 1x1 branches.

    Mixed_7b pools by average without the padding; Mixed_7c by max, as in TensorFlow's graph (pytorch-fid's
    FIDInceptionE_1 and FIDInceptionE_2).
    """

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """FID's Inception-v3: [N, 3, 299, 299] images in [-1, 1] -> [N, 2048] pool3 features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # the classifier: part of the weights file, not of FID
        self.weights_hash = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _few(keys: set[str]) -> str:
    """Up to three of the keys, for a one-line message."""
    return ", ".join(sorted(keys)[:3]) + (", ..." if len(keys) > 3 else "")


def load_inception(path: str | Path) -> InceptionFeatures:
    """FID's Inception-v3 with the weights of a .safetensors file keyed like pytorch-fid's; eval mode, no grad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Inception weights {path} do not exist")
    try:
        state = load_file(path)
    except SafetensorError as e:
        raise UserError(f"{path} is not a safetensors file ({str(e).splitlines()[0]}); convert pytorch-fid's .pth "
                        "once as docs/metrics.md shows") from None
    net = InceptionFeatures()
    expected = net.state_dict()
    # BatchNorm's batch counters do not change eval outputs; files converted from TensorFlow do not have them
    optional = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing, unexpected = set(expected) - optional - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise UserError(f"{path} does not hold pytorch-fid's Inception-v3 weights: {len(missing)} missing keys "
                        f"({_few(missing)}), {len(unexpected)} unexpected ({_few(unexpected)})")
    wrong = {k for k, v in state.items() if v.shape != expected[k].shape}
    if wrong:
        raise UserError(f"{path} does not hold pytorch-fid's Inception-v3 weights: wrong shapes of {_few(wrong)}")
    net.load_state_dict({**expected, **state})
    net.weights_hash = tensor_digest(*(v for k, v in sorted(net.state_dict().items()) if k not in optional))
    return net.eval().requires_grad_(False)


def inception_input(images: torch.Tensor, zero_to_one: bool = False) -> torch.Tensor:
    """pytorch-fid's preprocessing: 8-bit pixels (as read from image files), RGB, 299x299 bilinear, in [-1, 1]."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"standard FID needs RGB or grayscale images [N, 3 or 1, H, W], got {tuple(images.shape)}")
    x = images.float() if zero_to_one else (images.float() + 1) / 2
    x = (x.clamp(0, 1) * 255).round() / 255
    x = x.expand(-1, 3, -1, -1)  # grayscale to RGB, as PIL's convert("RGB") does
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


@torch.no_grad()
def inception_features(images: torch.Tensor, net: InceptionFeatures, zero_to_one: bool = False,
                       cache: bool = True) -> torch.Tensor:
    """pool3 features [N, 2048] of images in [-1, 1] (or [0, 1]); cached by the weights' hash and images' digest."""
    from safetensors.torch import load_file, save_file

    images = images.detach().cpu()
    cache = cache and bool(net.weights_hash)  # only load_inception's networks know the hash of their weights
    digest = settings_hash({"weights": net.weights_hash, "images": tensor_digest(images), "zero_to_one": zero_to_one,
                            "preprocess_version": PREPROCESS_VERSION})
    path = cache_path("inception", "features", digest, ".safetensors")
    if cache and path.exists():
        return load_file(path)["features"]
    log.info("computing Inception features of %d images", len(images))
    device = next(net.parameters()).device
    features = torch.cat([net(inception_input(images[lo:lo + BATCH].to(device), zero_to_one)).float().cpu()
                          for lo in range(0, len(images), BATCH)])
    if cache:
        write_atomically(path, lambda tmp: save_file({"features": features}, str(tmp), metadata={"hash": digest}))
    return features


def inception_fid(images_a: torch.Tensor, images_b: torch.Tensor, weights: str | Path | InceptionFeatures,
                  zero_to_one: bool = False) -> float:
    """Standard FID between two image sets with pytorch-fid's network and preprocessing; features are cached."""
    net = weights if isinstance(weights, InceptionFeatures) else load_inception(weights)
    return frechet_distance(inception_features(images_a, net, zero_to_one),
                            inception_features(images_b, net, zero_to_one))


def inception_quality(data: Dataset, samples: torch.Tensor, net: InceptionFeatures,
                      n_ref: int | None = None) -> dict[str, float | str]:
    """fid_inception of samples against the ruler's real reference set, its jackknife interval (as fd's: leave-group
    values of both sides, kept under "jackknife" for paired differences) and its floor (held-out real images)."""
    if data.kind != "image":
        raise UserError(f"{data.name} is not an image dataset: standard Inception FID needs images")
    images, _ = real_images(data)
    split = real_split(len(images), len(samples), n_ref)
    reference = inception_features(images[split.reference], net)
    features = inception_features(samples, net, cache=False)
    fid = frechet_distance(features, reference)
    values = jackknife_values(lambda a, b: frechet_distance(features[a], reference[b]), len(features), len(reference))
    low, high = jackknife_interval("fid_inception", fid, values)
    return {"fid_inception": fid, "fid_inception_lo": low, "fid_inception_hi": high,
            "fid_inception_floor": frechet_distance(inception_features(images[split.held_out], net), reference),
            "inception_weights": net.weights_hash, "jackknife": {"fid_inception": values}}
