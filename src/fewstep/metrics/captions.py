"""The captions ruler: an attribute network reads every object of an image, and samples are scored on their prompts.

prompt accuracy (GenEval's idea, Ghosh et al. 2023, on the captions grammar): the share of samples whose every stated
attribute is read back right; per-attribute accuracies; fd / precision / recall in the attribute network's
penultimate features against real renders of the same captions. Each comes with its floor: real renders of the same
captions in place of the samples (the ceiling of prompt accuracy, the floor of fd).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fewstep.core.errors import UserError
from fewstep.data.captions import (ATTRIBUTES, REGIONS, RESOLUTIONS, SEEDS, VOCABULARIES, caption_attributes,
                                   caption_prompts, draw_prompts, evaluation_set, is_heldout, render)
from fewstep.metrics.cache import cache_path, settings_hash, tensor_digest, write_atomically
from fewstep.metrics.features import FeatureNet, deterministic_cpu, train_network
from fewstep.metrics.floor import FLOOR_SEED, MIN_SAMPLES, REFERENCE_SEED
from fewstep.metrics.image import image_quality
from fewstep.metrics.persample import SampleMean
from fewstep.metrics.uncertainty import image_uncertainty

ARCH_VERSION = 1  # bump when AttributeNet or its training recipe changes: it invalidates every cached network
HEADS = tuple(len(v) for v in VOCABULARIES)  # one softmax head per ATTRIBUTES column
PROBE = 512  # training images whose bytes enter the cache key (with every attribute row): renders are deterministic
TEST_N = 2000  # test images per split on which a trained network's accuracy is recorded
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeConfig:
    """How the attribute network is built and trained; its hash (with the training data's) names the cache entry."""

    width: int = 16
    feature_dim: int = 128
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    noise_std: float = 0.2  # Gaussian pixel noise of a random std in [0, noise_std] per image, for imperfect samples
    max_blur: float = 1.0  # Gaussian blur of a random std in [0, max_blur] pixels (at 32x32; scaled with resolution)
    n_train: int = 20000  # renders of the "ruler" split: every colour+shape pair, disjoint seeds from the dataset's
    seed: int = 0


class AttributeNet(FeatureNet):
    """FeatureNet with a flattened last map (so it knows left from right) and one head per ATTRIBUTES column."""

    def __init__(self, resolution: int, width: int = 16, feature_dim: int = 128):
        super().__init__((3, resolution, resolution), sum(HEADS), width, feature_dim, spatial=True)
        self.test_report: dict = {}

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """Attribute rows [N, len(ATTRIBUTES)] read from images in [-1, 1] (slot 1 is read even for one object)."""
        return torch.stack([head.argmax(1) for head in self.logits(images).split(HEADS, 1)], 1)


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the heads, per image; an empty slot (-1) adds nothing."""
    return sum(F.cross_entropy(head, targets[:, i], ignore_index=-1, reduction="sum")
               for i, head in enumerate(logits.split(HEADS, 1))) / len(targets)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a separable Gaussian of its own std sigma[i] (pixels; 0 leaves it unchanged)."""
    radius = 3
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)  # [B * C, taps]
    b, c, h, w = x.shape
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return F.conv2d(y, kernel[:, None, :, None], groups=b * c).reshape(b, c, h, w)


def _augment(config: "AttributeConfig", resolution: int):
    """Blur and pixel noise of random strength per image, so the network reads imperfect samples as a person would."""
    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        blur = config.max_blur * resolution / 32 * torch.rand(len(x), generator=g)
        noise = config.noise_std * torch.rand(len(x), 1, 1, 1, generator=g)
        return _blur(x, blur) + noise * torch.randn(x.shape, generator=g)
    return augment


def attribute_terms(read: torch.Tensor, wanted: torch.Tensor) -> dict[str, SampleMean]:
    """Per-sample terms of prompt_accuracy (every stated attribute right) and the per-attribute accuracies of read
    rows vs requested rows.

    count: one object or two; layout: the region of one object or the axis of a pair; shape / colour / size: over
    every requested object (hits / objects per sample), in canonical slot order (a pair drawn in swapped places is
    wrong).
    """
    read, wanted = read.cpu(), wanted.cpu()
    present = wanted[:, [1, 4]] >= 0
    right = read[:, 0] == wanted[:, 0]
    out = {"count_accuracy": SampleMean((read[:, 0] >= len(REGIONS)) == (wanted[:, 0] >= len(REGIONS))),
           "layout_accuracy": SampleMean(right.clone())}
    for name, columns in (("shape", [1, 4]), ("colour", [2, 5]), ("size", [3, 6])):
        hit = read[:, columns] == wanted[:, columns]
        out[f"{name}_accuracy"] = SampleMean((hit & present).sum(1), present.sum(1))
        right &= (hit | ~present).all(1)
    return {"prompt_accuracy": SampleMean(right), **out}


def binding_terms(read: torch.Tensor, wanted: torch.Tensor) -> dict[str, SampleMean]:
    """Per-sample terms that say where prompt accuracy is lost: over one-object scenes (single_accuracy), over
    two-object scenes (pair_accuracy), and the share of two-object scenes with an attribute swapped between the two
    objects (swapped_rate: a binding error, e.g. "a red circle left of a blue square" drawn as a blue circle left of
    a red square). first_object_accuracy / second_object_accuracy: the share of two-object scenes whose left / top
    (slot 0, named first in canonical captions) or right / bottom object has every attribute right, whatever the
    other object. A term is left out when no requested scene holds its kind."""
    read, wanted = read.cpu(), wanted.cpu()
    pair = wanted[:, 0] >= len(REGIONS)
    right = attribute_terms(read, wanted)["prompt_accuracy"].values
    swapped = torch.zeros_like(pair)
    for first, second in ((1, 4), (2, 5), (3, 6)):
        swapped |= ((read[:, first] == wanted[:, second]) & (read[:, second] == wanted[:, first])
                    & (wanted[:, first] != wanted[:, second]))
    first, second = ((read[:, slot] == wanted[:, slot]).all(1) & pair for slot in ([1, 2, 3], [4, 5, 6]))
    terms = {"single_accuracy": SampleMean(right & ~pair, ~pair), "pair_accuracy": SampleMean(right & pair, pair),
             "swapped_rate": SampleMean(swapped & pair, pair), "first_object_accuracy": SampleMean(first, pair),
             "second_object_accuracy": SampleMean(second, pair)}
    return {k: t for k, t in terms.items() if t.weights.any()}


def attribute_accuracy(read: torch.Tensor, wanted: torch.Tensor) -> dict[str, float]:
    """prompt_accuracy and per-attribute accuracies of read rows vs requested rows (attribute_terms' estimates)."""
    return {k: t.estimate() for k, t in attribute_terms(read, wanted).items()}


def _training_data(resolution: int, config: AttributeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = draw_prompts("ruler", config.n_train)
    return render(prompts.attributes, resolution, SEEDS["ruler"]), prompts.attributes


def _settings(resolution: int, config: AttributeConfig) -> dict:
    """Everything the trained weights depend on: recipe, architecture version and (a probe of) the data's bytes."""
    attributes = draw_prompts("ruler", config.n_train).attributes
    probe = render(attributes[:PROBE], resolution, SEEDS["ruler"])
    return {"arch_version": ARCH_VERSION, "resolution": resolution, "attributes": list(ATTRIBUTES),
            "data": tensor_digest(attributes, probe), **asdict(config)}


def attribute_network(resolution: int = 32, config: AttributeConfig = AttributeConfig()) -> AttributeNet:
    """The captions attribute network: loaded from the cache, or trained on CPU (deterministically) and cached."""
    from safetensors.torch import load_file, save_file

    if resolution not in RESOLUTIONS:
        raise UserError(f"the captions ruler reads {', '.join(map(str, RESOLUTIONS))} pixel images, not {resolution}")
    settings = _settings(resolution, config)
    digest = settings_hash(settings)
    weights, info = (cache_path("attributes", f"captions{resolution}", digest, s) for s in (".safetensors", ".json"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = AttributeNet(resolution, config.width, config.feature_dim)
    record = json.loads(info.read_text()) if info.exists() and weights.exists() else {}
    if record.get("hash") == digest:
        net.load_state_dict(load_file(weights))
    else:
        log.info("training the captions%d attribute network (once; cached in %s)", resolution, weights.parent)
        start = time.perf_counter()
        with deterministic_cpu():
            train_network(net, *_training_data(resolution, config), config, _augment(config, resolution), _loss)
        seconds = round(time.perf_counter() - start, 2)
        tests = {split: evaluation_set(split, TEST_N, resolution) for split in ("seen", "heldout")}
        record = {"hash": digest, "settings": settings, "train_seconds": seconds, "torch": torch.__version__,
                  "test": {split: attribute_accuracy(net.read(images), prompts.attributes)
                           for split, (images, prompts) in tests.items()}}
        write_atomically(weights, lambda tmp: save_file(net.state_dict(), str(tmp)))
        write_atomically(info, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))  # last: marks it complete
    net.test_report, net.settings_hash = record["test"], digest
    net.test_accuracy = record["test"]["heldout"]["prompt_accuracy"]
    return net.eval().requires_grad_(False)


RULER_CONFIG = AttributeConfig()  # the attribute network eval, bench and search-schedule read text-to-image samples by


def ruler_resolution(side: int) -> int:
    """The resolution the ruler reads images of this side at: the side when it is 16, 32 or 64, else the nearest."""
    return min(RESOLUTIONS, key=lambda r: abs(r - side))


def ruler_images(images: torch.Tensor) -> torch.Tensor:
    """Images at a resolution the ruler reads: as they are when 16, 32 or 64 pixels wide, else resized (antialiased
    bilinear) to the nearest of them (a text-to-image model decoding to another size)."""
    target = ruler_resolution(images.shape[-1])
    if target == images.shape[-1]:
        return images
    return F.interpolate(images, size=(target, target), mode="bilinear", antialias=True, align_corners=False)


def _quality(net: AttributeNet, images: torch.Tensor, wanted: torch.Tensor, reference: torch.Tensor) -> dict:
    return {**attribute_accuracy(net.read(images), wanted), **image_quality(net.features(images), reference)}


def _floor(net: AttributeNet, wanted: torch.Tensor, reference: torch.Tensor) -> dict:
    """The metrics of fresh real renders of the wanted captions (seed FLOOR_SEED) against the same reference."""
    real = render(wanted, net.input_shape[-1], FLOOR_SEED)
    floor = _quality(net, real, wanted, reference)
    return {**{f"{k}_floor": v for k, v in floor.items()}, "floor_n": len(real)}


def _check_split(wanted: torch.Tensor, split: str) -> None:
    heldout = is_heldout(wanted)
    if split not in ("seen", "heldout"):
        raise UserError(f"caption split must be 'seen' or 'heldout', not {split!r}")
    if split == "seen" and heldout.any():
        raise UserError(f"{int(heldout.sum())} of the 'seen' captions contain a held-out colour+shape pair; "
                        "score them with split='heldout' (caption_prompts gives each split's prompts)")
    if split == "heldout" and not heldout.all():
        raise UserError(f"{int((~heldout).sum())} of the 'heldout' captions contain no held-out colour+shape pair; "
                        "score them with split='seen' (caption_prompts gives each split's prompts)")


def caption_quality(images: torch.Tensor, captions: list[str], split: str, clip: str | Path | None = None,
                    config: AttributeConfig = AttributeConfig()) -> dict:
    """prompt and per-attribute accuracy, fd / precision / recall of images drawn for captions, with their floors
    and intervals (fewstep.metrics.uncertainty: FD from a grouped jackknife; the accuracies resample per-sample hits).

    The reference is a render of the same captions (seed REFERENCE_SEED), the floor another render (FLOOR_SEED),
    both at the same n. split ("seen" or "heldout") must match the captions, so the two sets are reported apart.
    With clip (a local CLIP folder in safetensors) the row adds clip_score and its floor. config selects the
    attribute network (the default everywhere but in fast tests).
    """
    images = images.detach().cpu().float()
    wanted = caption_attributes(captions)
    n = len(images)
    if n < MIN_SAMPLES or len(captions) != n:
        raise UserError(f"caption_quality needs at least {MIN_SAMPLES} images and one caption each, "
                        f"got {n} images and {len(captions)} captions")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise UserError(f"captions images are [N, 3, R, R] in [-1, 1], got {tuple(images.shape)}")
    _check_split(wanted, split)
    net = attribute_network(images.shape[-1], config)
    reference = net.features(render(wanted, images.shape[-1], REFERENCE_SEED))
    read = net.read(images)
    features, terms = net.features(images), {**attribute_terms(read, wanted), **binding_terms(read, wanted)}
    out = {"n": n, "split": split, "attribute_net": net.settings_hash, **{k: t.estimate() for k, t in terms.items()},
           **image_quality(features, reference), **_floor(net, wanted, reference)}
    if clip is not None:
        from fewstep.metrics.clip import clip_score, clip_similarities, load_clip

        model = load_clip(clip)
        terms["clip_score"] = SampleMean(clip_similarities(images, captions, model))
        out["clip_score"] = max(terms["clip_score"].estimate(), 0.0)  # clip_score's clamp
        out["clip_score_floor"] = clip_score(render(wanted, images.shape[-1], FLOOR_SEED), captions, model)
    return {**out, **image_uncertainty(features, reference, out, terms)}


def caption_floor(n: int, split: str = "seen", resolution: int = 32,
                  config: AttributeConfig = AttributeConfig()) -> dict:
    """The floors of caption_quality for caption_prompts(split, n): real renders with their own captions."""
    if n < MIN_SAMPLES:
        raise UserError(f"a floor needs at least {MIN_SAMPLES} images, got {n}")
    wanted = caption_prompts(split, n).attributes
    net = attribute_network(resolution, config)
    return {"split": split, **_floor(net, wanted, net.features(render(wanted, resolution, REFERENCE_SEED)))}
