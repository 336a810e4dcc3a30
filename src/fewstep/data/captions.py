"""Captioned procedural scenes: one or two coloured shapes and a caption that states every attribute.

Grammar (every caption is one of two forms; a parser reads any of them back):

    OBJECT REGION                  "a small red circle on the left"
    OBJECT RELATION OBJECT         "a large blue square above a small yellow triangle"
    OBJECT   := a SIZE COLOUR SHAPE
    REGION   := on the left | on the right | at the top | at the bottom | in the centre
    RELATION := left of | right of | above | below

A scene's attributes are one canonical row of ATTRIBUTES: the layout (a region for one object, a horizontal or
vertical pair for two), then shape, colour and size of slot 0 (the object, or the left / top one of a pair) and
slot 1 (the right / bottom one; -1 when absent). Drawn captions name a pair from slot 0 ("left of", "above"): CLIP's
text encoder is causal, so under free word order the first-named object's words cannot see the relation that says
which object they describe, and a teacher then swaps attributes between the objects in about half of its pairs
(docs/BENCHMARKS.md §13); the parser still reads both orders. Some colour+shape pairs (HELDOUT_PAIRS) never
occur in training captions; the held-out test split holds exactly the captions that contain one, to measure
compositional generalisation.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
REGIONS = ("left", "right", "top", "bottom", "centre")
LAYOUTS = (*REGIONS, "horizontal", "vertical")  # the first five hold one object, the last two a pair
ATTRIBUTES = ("layout", "shape0", "colour0", "size0", "shape1", "colour1", "size1")
VOCABULARIES = (LAYOUTS, SHAPES, COLOURS, SIZES, SHAPES, COLOURS, SIZES)  # the classes of each ATTRIBUTES column
HELDOUT_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"))  # each colour and shape keeps others
SPLITS = ("train", "seen", "heldout", "ruler")  # ruler: the attribute network's own training scenes
RESOLUTIONS = (16, 32, 64)

REGION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                "centre": "in the centre"}
REGION_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                  "centre": (0.5, 0.5)}
# relation -> (layout, is the first-mentioned object slot 0?)
RELATIONS = {"left of": ("horizontal", True), "right of": ("horizontal", False), "above": ("vertical", True),
             "below": ("vertical", False)}
RGB = {"red": (0.9, 0.15, 0.15), "green": (0.15, 0.75, 0.2), "blue": (0.2, 0.35, 0.95), "yellow": (0.95, 0.85, 0.15)}
BACKGROUND = 0.1  # plain dark grey, in [0, 1]
RADIUS = {"small": (0.11, 0.13), "large": (0.19, 0.22)}  # circumradius range, in units of the image side
REGION_JITTER, PAIR_SPREAD, MARGIN = 0.04, 0.15, 0.02
SEEDS = {"train": 1, "seen": 2, "heldout": 3, "ruler": 4}  # attribute draws; renders add RENDER_SEED_OFFSET
RENDER_SEED_OFFSET = 100
BLOCK = 1024  # items drawn per generator, so the first n items never depend on how many are drawn
GRAMMAR = "'a SIZE COLOUR SHAPE REGION' or 'a SIZE COLOUR SHAPE RELATION a SIZE COLOUR SHAPE'"


class Prompts(NamedTuple):
    """Captions and their canonical attribute rows [n, len(ATTRIBUTES)]."""

    captions: list[str]
    attributes: torch.Tensor


# ---- the grammar ----------------------------------------------------------------------------------------------------

def _object_words(shape: int, colour: int, size: int) -> str:
    return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]}"


def caption_of(row: tuple[int, ...] | torch.Tensor, slot1_first: bool = False) -> str:
    """The caption of an attribute row; a pair is described from slot 0 ("left of", "above") or, with
    slot1_first, from slot 1 ("right of", "below")."""
    layout, *slots = (int(v) for v in row)
    first = _object_words(*slots[:3])
    if LAYOUTS[layout] in REGIONS:
        return f"{first} {REGION_WORDS[LAYOUTS[layout]]}"
    second = _object_words(*slots[3:])
    relation = next(r for r, (lay, slot0_first) in RELATIONS.items()
                    if lay == LAYOUTS[layout] and slot0_first != slot1_first)
    return f"{second} {relation} {first}" if slot1_first else f"{first} {relation} {second}"


def _parse_object(words: list[str], text: str) -> tuple[int, int, int]:
    """(shape, colour, size) of the words 'a SIZE COLOUR SHAPE'."""
    expected = (("a",), SIZES, COLOURS, SHAPES), ("'a'", "a size", "a colour", "a shape")
    for word, vocabulary, what in zip(words, *expected):
        if word not in vocabulary:
            raise UserError(f"caption {text!r} is outside the grammar: {word!r} is not {what} "
                            f"({', '.join(vocabulary)}); captions read {GRAMMAR}")
    return SHAPES.index(words[3]), COLOURS.index(words[2]), SIZES.index(words[1])


def parse_caption(text: str) -> tuple[int, ...]:
    """The canonical attribute row (see ATTRIBUTES) of a caption of the grammar; a UserError for any other text."""
    words = re.sub(r"\s+", " ", str(text).strip().lower().rstrip(".")).split(" ")
    if len(words) not in (7, 9, 10):  # OBJECT REGION, or OBJECT RELATION OBJECT with a one- or two-word relation
        raise UserError(f"caption {text!r} is outside the grammar: captions read {GRAMMAR}, with REGION one of "
                        f"{', '.join(REGION_WORDS.values())} and RELATION one of {', '.join(RELATIONS)}")
    first = _parse_object(words[:4], text)
    if len(words) == 7:
        region = next((r for r, w in REGION_WORDS.items() if w == " ".join(words[4:])), None)
        if region is None:
            raise UserError(f"caption {text!r} is outside the grammar: {' '.join(words[4:])!r} is not a region "
                            f"({', '.join(REGION_WORDS.values())}); captions read {GRAMMAR}")
        return (LAYOUTS.index(region), *first, -1, -1, -1)
    relation = " ".join(words[4:-4])
    if relation not in RELATIONS:
        raise UserError(f"caption {text!r} is outside the grammar: {relation!r} is not a relation "
                        f"({', '.join(RELATIONS)}); captions read {GRAMMAR}")
    second = _parse_object(words[-4:], text)
    layout, slot0_first = RELATIONS[relation]
    slot0, slot1 = (first, second) if slot0_first else (second, first)
    return (LAYOUTS.index(layout), *slot0, *slot1)


def caption_attributes(captions: list[str]) -> torch.Tensor:
    """Attribute rows [n, len(ATTRIBUTES)] of captions (a UserError names the first one outside the grammar)."""
    return torch.tensor([parse_caption(c) for c in captions], dtype=torch.long).reshape(-1, len(ATTRIBUTES))


def is_heldout(attributes: torch.Tensor) -> torch.Tensor:
    """Per row: does the scene contain a held-out colour+shape pair?"""
    out = torch.zeros(len(attributes), dtype=torch.bool)
    for colour, shape in HELDOUT_PAIRS:
        for s, c in ((1, 2), (4, 5)):
            out |= (attributes[:, s] == SHAPES.index(shape)) & (attributes[:, c] == COLOURS.index(colour))
    return out


# ---- drawing scenes -------------------------------------------------------------------------------------------------

def _blocks(n: int, seed: int):
    """(generator, rows) per block of BLOCK items; block b's generator is seeded by (seed, b).

    A block always draws BLOCK items and keeps the first `rows`, so item i never depends on how many are drawn.
    """
    for b, lo in enumerate(range(0, n, BLOCK)):
        yield np.random.default_rng([seed, b]), min(BLOCK, n - lo)


def _objects(rng: np.random.Generator, pairs: list[tuple[int, int]], n: int) -> np.ndarray:
    """[n, 3] (shape, colour, size) with (colour, shape) drawn uniformly from pairs and size uniformly."""
    chosen = np.array(pairs)[rng.integers(0, len(pairs), n)]
    return np.stack([chosen[:, 1], chosen[:, 0], rng.integers(0, len(SIZES), n)], 1)


def draw_prompts(split: str, n: int) -> Prompts:
    """n captions of a split (see SPLITS) with their attribute rows.

    Half the scenes hold one object in a uniform region, half a horizontal or vertical pair, named from its left / top
    object (caption_of's canonical order). "train" and "seen" use only the colour+shape pairs outside HELDOUT_PAIRS;
    every "heldout" scene contains at least one held-out pair;
    "ruler" (the attribute network's training data) uses every pair.
    """
    if split not in SPLITS:
        raise UserError(f"unknown caption split {split!r}; choose one of {', '.join(SPLITS)}")
    heldout = [(COLOURS.index(c), SHAPES.index(s)) for c, s in HELDOUT_PAIRS]
    every = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    seen = [p for p in every if p not in heldout]
    blocks, captions = [], []
    for rng, rows in _blocks(n, SEEDS[split]):
        pair = rng.random(BLOCK) < 0.5
        layout = np.where(pair, len(REGIONS) + rng.integers(0, 2, BLOCK), rng.integers(0, len(REGIONS), BLOCK))
        if split == "heldout":  # one held-out object, the other from every pair, in a random slot order
            a, b = _objects(rng, heldout, BLOCK), _objects(rng, every, BLOCK)
            swap = (rng.random(BLOCK) < 0.5)[:, None] & pair[:, None]
            slot0, slot1 = np.where(swap, b, a), np.where(swap, a, b)
        else:
            pairs = every if split == "ruler" else seen
            slot0, slot1 = _objects(rng, pairs, BLOCK), _objects(rng, pairs, BLOCK)
        block = np.concatenate([layout[:, None], slot0, np.where(pair[:, None], slot1, -1)], 1)[:rows]
        captions += [caption_of(row) for row in block]
        blocks.append(block)
    return Prompts(captions, torch.from_numpy(np.concatenate(blocks)).long())


def caption_prompts(split: str = "seen", n: int = 1000) -> Prompts:
    """The evaluation prompts of a split ("seen" or "heldout"): the first n captions of its test set."""
    if split not in ("seen", "heldout"):
        raise UserError(f"evaluation prompts come from the 'seen' or 'heldout' split, not {split!r}")
    return draw_prompts(split, n)


# ---- rendering ------------------------------------------------------------------------------------------------------

def _geometry(attributes: np.ndarray, seed: int) -> np.ndarray:
    """[n, 2, 3] (centre x, centre y, circumradius) per slot, in units of the image side; radius 0 when empty."""
    geometry, lo = np.zeros((len(attributes), 2, 3)), 0
    centres = np.array([REGION_CENTRES[region] for region in REGIONS])
    for rng, m in _blocks(len(attributes), seed):
        layout, u = attributes[lo:lo + m, 0], rng.random((BLOCK, 2, 3))[:m]  # per slot: radius, along, across
        for slot in (0, 1):
            size = attributes[lo:lo + m, 3 + 3 * slot]
            (s0, s1), (l0, l1) = RADIUS["small"], RADIUS["large"]
            r = np.where(size == 1, l0 + u[:, slot, 0] * (l1 - l0), s0 + u[:, slot, 0] * (s1 - s0))
            inner = (r + MARGIN)[:, None]
            # one object: its region's centre +- REGION_JITTER, kept inside the canvas
            one = centres[np.minimum(layout, len(REGIONS) - 1)] + (2 * u[:, slot, 1:] - 1) * REGION_JITTER
            one = np.clip(one, inner, 1 - inner)
            # a pair: each object inside its own half along the pair's axis, so the two never overlap
            along = inner[:, 0] + 0.5 * slot + u[:, slot, 1] * (0.5 - 2 * inner[:, 0])
            across = 0.5 + (2 * u[:, slot, 2] - 1) * PAIR_SPREAD
            horizontal = (layout == LAYOUTS.index("horizontal"))[:, None]
            pair = np.where(horizontal, np.stack([along, across], 1), np.stack([across, along], 1))
            xy = np.where((layout < len(REGIONS))[:, None], one, pair)
            geometry[lo:lo + m, slot] = np.where((size >= 0)[:, None], np.concatenate([xy, r[:, None]], 1), 0)
        lo += m
    return geometry


def _coverage(shape: torch.Tensor, geometry: torch.Tensor, resolution: int) -> torch.Tensor:
    """Anti-aliased coverage [n, R, R] of one shape per row: clamp(1/2 - signed distance in pixels, 0, 1)."""
    grid = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    dx = grid[None, None, :] - geometry[:, 0, None, None]
    dy = grid[None, :, None] - geometry[:, 1, None, None]
    r = geometry[:, 2, None, None]
    circle = torch.sqrt(dx**2 + dy**2) - r
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    # equilateral triangle pointing up, inscribed in the circle of radius r: its inradius is r / 2
    triangle = torch.maximum(0.8660254 * dx.abs() - 0.5 * dy, dy) - 0.5 * r
    shape = shape[:, None, None]
    distance = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    return (0.5 - distance * resolution).clamp(0, 1) * (r > 0)


def render(attributes: torch.Tensor, resolution: int = 32, seed: int = 0) -> torch.Tensor:
    """Images [n, 3, R, R] in [-1, 1] of attribute rows; positions and sizes within their classes come from seed."""
    if resolution not in RESOLUTIONS:
        raise UserError(f"captions renders at resolution {', '.join(map(str, RESOLUTIONS))}, not {resolution}")
    a = attributes.long()
    geometry = torch.from_numpy(_geometry(a.numpy(), seed)).float()
    rgb = torch.tensor([RGB[c] for c in COLOURS])
    images = torch.empty(len(a), 3, resolution, resolution)
    for lo in range(0, len(a), BLOCK):  # in blocks, so 64x64 sets stay small in memory
        rows = slice(lo, lo + BLOCK)
        image = torch.full_like(images[rows], BACKGROUND)
        for slot in (0, 1):
            alpha = _coverage(a[rows, 1 + 3 * slot], geometry[rows, slot], resolution)[:, None]
            colour = rgb[a[rows, 2 + 3 * slot].clamp(min=0)][:, :, None, None]
            image = image * (1 - alpha) + colour * alpha
        images[rows] = image * 2 - 1
    return images


# ---- the dataset ----------------------------------------------------------------------------------------------------

def evaluation_set(split: str, n: int = 2000, resolution: int = 32) -> tuple[torch.Tensor, Prompts]:
    """The test images of a split ("seen" or "heldout"): renders of caption_prompts(split, n), with the prompts."""
    prompts = caption_prompts(split, n)
    return render(prompts.attributes, resolution, SEEDS[split] + RENDER_SEED_OFFSET), prompts


def load_captions(resolution: int = 32, n_train: int = 20000, n_test: int = 2000) -> Dataset:
    """The captions set: n_train training scenes, then a test set of n_test seen and n_test held-out scenes.

    test is evaluation_set("seen") followed by evaluation_set("heldout"); meta holds the attribute rows
    ("train_attributes", "test_attributes") and which test rows are held out ("test_heldout").
    """
    train = draw_prompts("train", n_train)
    (seen, seen_prompts), (heldout, heldout_prompts) = (evaluation_set(s, n_test, resolution)
                                                        for s in ("seen", "heldout"))
    test_attributes = torch.cat([seen_prompts.attributes, heldout_prompts.attributes])
    return Dataset(
        f"captions{resolution}", "image", render(train.attributes, resolution, SEEDS["train"] + RENDER_SEED_OFFSET),
        torch.cat([seen, heldout]), train_text=train.captions,
        test_text=seen_prompts.captions + heldout_prompts.captions,
        meta={"resolution": resolution, "attributes": ATTRIBUTES, "train_attributes": train.attributes,
              "test_attributes": test_attributes, "test_heldout": is_heldout(test_attributes),
              "heldout_pairs": HELDOUT_PAIRS})
