"""Shared fixtures: tiny training configs and a tiny trained teacher."""

from __future__ import annotations

import os

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.train.teacher import resolve_train_config, train_teacher

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each (oversubscribed threads spin)
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes the tests start
    torch.set_num_threads(1)


def tiny_config(**overrides) -> TrainConfig:
    """The tiny preset on digits, on CPU: a UNet, class-conditional, 20 steps."""
    return resolve_train_config({"dataset": "digits", "preset": "tiny", "device": "cpu", **overrides})


@pytest.fixture(scope="session", autouse=True)
def fewstep_cache(tmp_path_factory):
    """One temporary cache per test session: feature networks and references are built once, never in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("fewstep-cache")
        mp.setenv("FEWSTEP_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A run directory holding a tiny digits teacher trained for 20 steps."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(tiny_config(), out)
    return out


@pytest.fixture(scope="session")
def toy_teacher(tmp_path_factory):
    """A run directory holding a tiny 8gaussians teacher (MLP, 300 steps)."""
    out = tmp_path_factory.mktemp("toy")
    train_teacher(resolve_train_config({"dataset": "8gaussians", "preset": "tiny", "device": "cpu", "steps": 300,
                                        "lr": 3e-3}), out)
    return out
