"""Items read on demand (a map-style torch Dataset of images, labels and captions), their seeded train/test split,
and reading a subset of them into memory with DataLoader workers."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from fewstep.core.errors import UserError
from fewstep.data.images import decode_image, image_size
from fewstep.data.spec import SHAPE_OPTIONS, DataSpec

if TYPE_CHECKING:
    from fewstep.data.base import Dataset

PARALLEL_FROM = 512  # read with worker processes from this many items on; fewer load faster in-process
STATS_ITEMS = 512  # a streamed set keeps this many (seeded) training items in memory, for sigma_data and previews


class Items(torch.utils.data.Dataset):
    """Item i is (x [C, H, W] float32 in [-1, 1], label (-1: none), caption ("" when the set has none))."""

    shape: tuple[int, ...]
    classes: list[str]  # label names; [] when unlabelled
    has_text: bool

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        raise NotImplementedError


class ImageItems(Items):
    """Items that are encoded images: subclasses give each item's file or bytes, label and caption."""

    labels: np.ndarray | None = None  # class codes per item, or None
    captions: Any = None  # caption per item where a subclass keeps them in memory

    def source(self, i: int) -> str | bytes:
        """Item i's image file or its encoded bytes."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """Where item i is, for error messages."""
        raise NotImplementedError

    def caption(self, i: int) -> str:
        return self.captions[i] if self.has_text else ""

    def decode_as(self, spec: DataSpec) -> None:
        """Take the spec's decoding options; resolution 0 means the first image's shorter side."""
        self.options = {k: spec.option(k) for k in SHAPE_OPTIONS}
        if not self.options["resolution"]:
            self.options["resolution"] = min(image_size(self.source(0), self.name(0)))
        self.shape = (self.options["channels"], self.options["resolution"], self.options["resolution"])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        x = decode_image(self.source(i), **self.options, name=self.name(i))
        return x, int(self.labels[i]) if self.labels is not None else -1, self.caption(i)


def index_labels(values: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """Label values (names or numbers) as codes 0..K-1 in sorted order of the values, and the values as names."""
    uniques = sorted(set(values))
    code = {v: i for i, v in enumerate(uniques)}
    return np.array([code[v] for v in values], np.int64), [str(v) for v in uniques]


def require_all_captions(captions: Sequence[str | None], names: Sequence[str]) -> bool:
    """Whether the set has captions: none or all of its items must (a UserError names the first without one)."""
    missing = [n for n, c in zip(names, captions) if c is None]
    if missing and len(missing) < len(captions):
        raise UserError(f"{len(missing)} of {len(captions)} items have no caption (first: {missing[0]}); caption every"
                        " item or none")
    return not missing


def split_indices(n: int, test_fraction: float, seed: int, max_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices of n items: a seeded permutation whose first min(n * test_fraction, max_test) are test."""
    if not 0 <= test_fraction < 1:
        raise UserError(f"test_fraction={test_fraction} must be in [0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, int(n * test_fraction)), max_test) if n > 1 and test_fraction > 0 else 0
    return order[n_test:], order[:n_test] if n_test else order[:1]  # a 1-item set is its own test set


def collate(rows: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack items into (x, labels, captions)."""
    return torch.stack([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), [r[2] for r in rows]


def read_batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """A DataLoader's batches; a user's mistake found in a worker comes back as its one line (DataLoader prepends
    the worker's traceback to the message)."""
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    iterator = iter(loader)
    try:
        yield from iterator
        return
    except UserError as e:
        message = str(e).strip().splitlines()[-1].removeprefix(prefix)
        e.__traceback__ = None  # its frames hold the iterator in a cycle: break it, so the workers stop now
    del iterator
    raise UserError(message)


def worker_count(n: int) -> int:
    """Worker processes for reading n items: none for small sets, else up to 4 (one core stays for the caller)."""
    return 0 if n < PARALLEL_FROM else max(1, min(4, (os.cpu_count() or 2) - 1))


def materialize(items: Items, index: torch.Tensor,
                workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Items `index` (in that order) read into memory: (x [n, C, H, W], labels [n], captions)."""
    if len(index) == 0:
        raise UserError("the dataset holds no items")
    workers = worker_count(len(index)) if workers is None else workers
    loader = DataLoader(torch.utils.data.Subset(items, index.tolist()), batch_size=64, num_workers=workers,
                        collate_fn=collate)
    x, labels, captions = torch.empty(len(index), *items.shape), torch.empty(len(index), dtype=torch.long), []
    for batch_x, batch_labels, batch_captions in read_batches(loader):  # in place: never a second copy of the set
        x[len(captions):len(captions) + len(batch_x)] = batch_x
        labels[len(captions):len(captions) + len(batch_x)] = batch_labels
        captions += batch_captions
    return x, labels, captions


@dataclass
class ItemSplit:
    """A set read on demand: its items and the indices of its training and held-out items."""

    items: Items
    train: torch.Tensor
    test: torch.Tensor


def check_values(x: torch.Tensor, where: str) -> None:
    """Finite values, and images in [-1, 1]: a one-line UserError otherwise."""
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: {int((~torch.isfinite(x)).flatten(1).any(1).sum())} items hold NaN or infinite "
                        "values; drop or fill them")
    if x.ndim == 4 and (x.min() < -1.001 or x.max() > 1.001):
        raise UserError(f"{where}: images must lie in [-1, 1], these span [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                        "; pass x * 2 - 1 for data in [0, 1]")


def items_dataset(spec: DataSpec, items: Items) -> Dataset:
    """Items as a Dataset: read into memory, or (option stream) its test items and a seeded sample of its training
    items, with the items themselves for a StreamSource."""
    from fewstep.data.base import Dataset

    if "resolution" in spec.options:  # record the resolution that "0: the images' own" came to
        spec = replace(spec, options={**spec.options, "resolution": items.shape[-1]})
    train, test = split_indices(len(items), *(spec.option(k) for k in ("test_fraction", "split_seed", "max_test")))
    stream = spec.option("stream")
    x_tr, y_tr, text_tr = materialize(items, train[:STATS_ITEMS] if stream else train)  # train is a seeded order
    x_te, y_te, text_te = materialize(items, test)
    check_values(x_tr, str(spec))
    check_values(x_te, str(spec))
    labelled = bool(items.classes)
    return Dataset(str(spec), "image" if len(items.shape) == 3 else "vector", x_tr, x_te,
                   y_tr if labelled else None, y_te if labelled else None, num_classes=len(items.classes),
                   train_text=text_tr if items.has_text else None, test_text=text_te if items.has_text else None,
                   meta={"resolution": items.shape[-1], "classes": items.classes},
                   spec=spec, streamed=ItemSplit(items, train, test) if stream else None)
