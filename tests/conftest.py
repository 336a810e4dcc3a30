"""Shared fixtures: tiny training configs and a tiny trained teacher."""

from __future__ import annotations

import pytest

from fewstep.config import TrainConfig
from fewstep.train.teacher import resolve_train_config, train_teacher


def tiny_config(**overrides) -> TrainConfig:
    """The tiny preset on digits, on CPU: a UNet, class-conditional, 20 steps."""
    return resolve_train_config({"dataset": "digits", "preset": "tiny", "device": "cpu", **overrides})


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A run directory holding a tiny digits teacher trained for 20 steps."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(tiny_config(), out)
    return out
