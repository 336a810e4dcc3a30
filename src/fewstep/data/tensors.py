"""Datasets passed in Python: tensors, or any torch Dataset of items (with labels and captions), for the training
entry points to take instead of a name."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.data.items import Items, check_values, items_dataset, split_indices
from fewstep.data.spec import OPTIONS, DataSpec


def _spec(content_hash: str, **options: Any) -> DataSpec:
    return DataSpec("python", "", {**OPTIONS["python"], **{k: v for k, v in options.items() if v is not None}},
                    content_hash)


def dataset_from_tensors(x: torch.Tensor, labels: torch.Tensor | None = None, text: Sequence[str] | None = None,
                         centres: torch.Tensor | None = None, test_fraction: float = 0.1, split_seed: int = 0,
                         max_test: int = 4096) -> Dataset:
    """Images [N, C, H, W] in [-1, 1] or vectors [N, D] (optional labels 0..K-1, one caption per item, mode centres),
    split into train and held-out items by a seeded permutation."""
    x = torch.as_tensor(x).float()
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim not in (2, 4) or len(x) < 2:
        raise UserError(f"tensors of shape {tuple(x.shape)}: pass images [N, C, H, W] or vectors [N, D], N >= 2")
    check_values(x, "dataset_from_tensors")
    for name, column in (("labels", labels), ("text", text)):
        if column is not None and len(column) != len(x):
            raise UserError(f"dataset_from_tensors: {len(column)} {name} for {len(x)} items; give one per item")
    y = None if labels is None else torch.as_tensor(labels).long()
    if y is not None and y.min() < 0:
        raise UserError("dataset_from_tensors: labels must be 0..K-1")
    h = hashlib.sha256(x.contiguous().numpy().tobytes())
    h.update(b"" if y is None else y.numpy().tobytes())
    h.update("\n".join(text or []).encode())
    spec = _spec(h.hexdigest()[:16], test_fraction=test_fraction, split_seed=split_seed, max_test=max_test)
    train, test = split_indices(len(x), test_fraction, split_seed, max_test)
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    captions = None if text is None else list(text)
    return Dataset(str(spec), "image" if x.ndim == 4 else "vector", x[train], x[test], pick(y, train), pick(y, test),
                   num_classes=0 if y is None else int(y.max()) + 1,
                   train_text=None if captions is None else [captions[i] for i in train.tolist()],
                   test_text=None if captions is None else [captions[i] for i in test.tolist()],
                   centres=None if centres is None else torch.as_tensor(centres).float(), spec=spec)


class TorchItems(Items):
    """A torch Dataset whose items are x, (x, label), (x, label, caption) or a dict with x / image, label, text."""

    def __init__(self, dataset: torch.utils.data.Dataset, num_classes: int = 0):
        self.dataset = dataset
        x, _, text = self._unpack(dataset[0])
        self.shape = tuple(x.shape)
        self.has_text = text is not None
        self.classes = [str(c) for c in getattr(dataset, "classes", [])] or [str(i) for i in range(num_classes)]

    @staticmethod
    def _unpack(item: Any) -> tuple[torch.Tensor, int, str | None]:
        if isinstance(item, dict):
            item = (item["x"] if "x" in item else item["image"], item.get("label", -1), item.get("text"))
        elif torch.is_tensor(item):
            item = (item,)
        x, label, text = (*item, -1, None)[:3]
        return torch.as_tensor(x).float(), int(label), text

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        x, label, text = self._unpack(self.dataset[i])
        return x, label, text or ""


def dataset_from_torch(dataset: torch.utils.data.Dataset, num_classes: int = 0, stream: bool = False,
                       test_fraction: float = 0.1, split_seed: int = 0, max_test: int = 4096) -> Dataset:
    """A torch Dataset (items in [-1, 1]) as a Dataset: read into memory, or streamed by DataLoader workers."""
    if len(dataset) < 2:
        raise UserError(f"the torch Dataset holds {len(dataset)} items; training and its held-out set need 2 or more")
    spec = _spec("", test_fraction=test_fraction, split_seed=split_seed, max_test=max_test, stream=stream)
    return items_dataset(spec, TorchItems(dataset, num_classes))
