"""The feature network: a small CNN classifier per labelled image dataset, trained once by fewstep and cached.

Its penultimate layer is the feature space of fd / precision / recall (the role Inception-v3 plays for FID);
its logits give the class accuracy and confidence of class-conditional samples.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically

ARCH_VERSION = 2  # bump when FeatureNet or the training recipe changes: it invalidates every cached network
EVAL_BATCH = 512
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureConfig:
    """How the feature network is built and trained; its hash (with the data's) names the cache entry."""

    width: int = 16
    feature_dim: int = 128
    steps: int = 700  # ~30 epochs of digits; a step budget keeps large folders affordable
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    max_shift: float = 0.125  # random translation by up to this fraction of the image side (replicate padding)
    seed: int = 0


class FeatureNet(nn.Module):
    """Conv stages (two 3x3 conv + BN + ReLU) with 2x average pooling between them, down to <= 4x4, then pooled.

    The last stage has 4 * width channels and each earlier, twice larger stage half as many, so every stage costs
    about the same and the network's cost grows with log(resolution). With spatial=True the last <= 4x4 map is
    flattened instead of averaged, so the features keep where things are (the caption ruler needs left from right).
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int, width: int = 16, feature_dim: int = 128,
                 spatial: bool = False):
        super().__init__()
        stages, res = 1, min(shape[1:])
        while res > 4:
            stages, res = stages + 1, res // 2
        layers: list[nn.Module] = []
        c_in = shape[0]
        for i in range(stages):
            c = max(8, 4 * width >> (stages - 1 - i))
            layers += [nn.AvgPool2d(2)] if i else []
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        h, w = (side >> (stages - 1) for side in shape[1:])
        pool, c_flat = (nn.Identity(), c_in * h * w) if spatial else (nn.AdaptiveAvgPool2d(1), c_in)
        self.body = nn.Sequential(*layers, pool, nn.Flatten(), nn.Linear(c_flat, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.input_shape = tuple(shape)
        self.test_accuracy = float("nan")
        self.settings_hash = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def _batched(self, fn: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.input_shape:
            raise UserError(f"images of shape {tuple(images.shape[1:])} do not match the dataset's {self.input_shape}")
        self.eval()
        device = next(self.parameters()).device
        # samples are clamped to the data range [-1, 1], as saving them as images would
        return torch.cat([fn(images[lo:lo + EVAL_BATCH].float().clamp(-1, 1).to(device)).float().cpu()
                          for lo in range(0, len(images), EVAL_BATCH)])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [N, feature_dim] of images in [-1, 1]."""
        return self._batched(self.body, images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes] of images in [-1, 1]."""
        return self._batched(self, images)


def _random_shift(x: torch.Tensor, max_shift: float, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift of its side, filling with the edge pixels."""
    p = round(max_shift * x.shape[-1])
    if p == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    offsets = torch.randint(0, 2 * p + 1, (len(x), 2), generator=g).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def _batches(n: int, batch_size: int, steps: int, g: torch.Generator):
    """Index batches of shuffled epochs, `steps` of them in all."""
    done = 0
    while True:
        order = torch.randperm(n, generator=g)
        for lo in range(0, n, batch_size):
            if done == steps:
                return
            done += 1
            yield order[lo:lo + batch_size]


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_network(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, cfg, augment: Augment,
                  loss: Loss = F.cross_entropy) -> None:
    """AdamW with a one-cycle learning rate (cfg: steps, batch_size, lr, weight_decay, seed); shuffling and
    augmentation come from one seeded generator."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    net.train()
    for idx in _batches(len(x), cfg.batch_size, cfg.steps, g):
        value = loss(net(augment(x[idx], g)), targets[idx])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        schedule.step()
    net.eval()


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One CPU thread with torch's deterministic algorithms, restoring the caller's settings afterwards.

    One thread makes trained weights independent of the machine's core count (and immune to busy cores).
    """
    previous, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)
        torch.set_num_threads(threads)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose top logit is the label."""
    return float((logits.argmax(1) == labels.to(logits.device)).double().mean())


def _settings(data: Dataset, cfg: FeatureConfig) -> dict:
    """Everything the trained weights depend on: recipe, architecture version and the data's bytes."""
    return {"arch_version": ARCH_VERSION, "dataset": data.name, "shape": list(data.shape),
            "num_classes": data.num_classes,
            "data": tensor_digest(data.train, data.train_labels, data.test, data.test_labels), **asdict(cfg)}


def _require_labelled_images(data: Dataset) -> None:
    """Raise a one-line UserError naming the unavailable metrics unless data is a labelled image set."""
    if data.kind != "image":
        raise UserError(f"{data.name} is not an image dataset: fd, precision, recall and accuracy need images "
                        "(2-D sets are measured with sw2, mmd and logp)")
    if data.train_labels is None or data.test_labels is None or data.num_classes < 2:
        raise UserError(f"{data.name} has no class labels, so fewstep cannot train its feature network: fd, precision, "
                        "recall, accuracy, confidence and feature agreement are unavailable; "
                        "put each class's images in its own sub-folder to enable them")


def feature_network(data: Dataset, config: FeatureConfig = FeatureConfig()) -> FeatureNet:
    """The dataset's feature network: loaded from the cache, or trained on CPU (deterministically) and cached."""
    from safetensors.torch import load_file, save_file

    _require_labelled_images(data)
    settings = _settings(data, config)
    digest = settings_hash(settings)
    weights, info = (cache_path("features", data.name, digest, suffix) for suffix in (".safetensors", ".json"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = FeatureNet(data.shape, data.num_classes, config.width, config.feature_dim)
    record = json.loads(info.read_text()) if info.exists() and weights.exists() else {}
    if record.get("hash") == digest:
        net.load_state_dict(load_file(weights))
    else:
        log.info("training the %s feature network (once; cached in %s)", data.name, weights.parent)
        start = time.perf_counter()
        with deterministic_cpu():
            train_network(net, data.train.float(), data.train_labels.long(), config,
                          lambda x, g: _random_shift(x, config.max_shift, g))
        record = {"hash": digest, "settings": settings,
                  "test_accuracy": accuracy(net.logits(data.test), data.test_labels),
                  "train_seconds": round(time.perf_counter() - start, 2), "torch": torch.__version__}
        write_atomically(weights, lambda tmp: save_file(net.state_dict(), str(tmp)))
        write_atomically(info, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))  # last: marks it complete
    net.test_accuracy, net.settings_hash = record["test_accuracy"], digest
    return net.eval().requires_grad_(False)
