"""scikit-learn's 8x8 handwritten digits, with a fixed train/test split, scaled to [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch

from fewstep.data.base import Dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> Dataset:
    """1797 digits (16 grey levels, 10 classes); a fixed 80/20 stratified split."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    raw = sk_load()
    images = (raw.images.astype(np.float32) / 16.0) * 2 - 1
    x_tr, x_te, y_tr, y_te = train_test_split(images, raw.target, test_size=TEST_FRACTION,
                                              random_state=SPLIT_SEED, stratify=raw.target)
    return Dataset("digits", "image", torch.from_numpy(x_tr)[:, None], torch.from_numpy(x_te)[:, None],
                   torch.from_numpy(y_tr).long(), torch.from_numpy(y_te).long(), num_classes=10)
