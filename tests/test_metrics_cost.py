"""Cost: FLOPs from torch's counter, median timing with repeats, peak memory."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from fewstep.core.denoiser import CallableDenoiser
from fewstep.core.schedules import karras
from fewstep.metrics import count_flops, flops_per_call, peak_memory, time_per_sample
from fewstep.samplers import generate


@pytest.fixture
def linear_denoiser():
    """A plain nn.Linear as the denoiser of 16-dim vectors: 2 * 16 * 16 FLOPs per sample per call."""
    layer = nn.Linear(16, 16)
    return CallableDenoiser(lambda x, sigma, cond: layer(x))


def test_flops_of_a_linear_denoiser_are_analytic(linear_denoiser):
    x = torch.randn(4, 16)
    assert flops_per_call(linear_denoiser, x, torch.ones(4)) == 2 * 16 * 16
    run = count_flops(lambda: generate(linear_denoiser, (16,), 4, karras(5, 0.1, 10.0), "euler"))
    assert run / 4 == 5 * 2 * 16 * 16  # NFE 5 calls per sample


def test_timing_is_a_median_of_recorded_repeats():
    timing = time_per_sample(lambda: time.sleep(0.002), batch_size=4)
    assert len(timing.repeats_seconds) == 5 and timing.warmup == 1 and timing.batch_size == 4
    assert 0.002 / 4 <= timing.seconds_per_sample == sorted(timing.repeats_seconds)[2] / 4
    with pytest.raises(ValueError, match="at least 5"):
        time_per_sample(lambda: None, 1, repeats=3)


def test_peak_memory_sees_a_large_temporary_tensor():
    def allocate():
        x = torch.ones(50_000_000)  # 200 MB
        time.sleep(0.05)
        return float(x[0])

    mem = peak_memory(allocate)
    assert mem.peak_bytes > 150e6 and mem.method.startswith("cpu_rss")
