"""Cost of sampling: FLOPs (torch.utils.flop_counter), wall-clock seconds per sample, and peak memory."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from fewstep.core.denoiser import Cond, Denoiser

RSS_POLL_SECONDS = 0.001


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs FlopCounterMode counts while fn() runs (matmuls and convolutions, 2 per multiply-add; no elementwise ops).

    Count a whole sampler run this way to include what accelerators skip; divide by the number of samples.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_call(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Cond = None) -> float:
    """FLOPs per sample of one denoiser call on the batch x; times NFE gives a plain sampler run's flops_per_sample."""
    return count_flops(lambda: denoiser(x, sigma, cond)) / len(x)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    """Median seconds per sample over the repeats, each repeat being one call of a batch of batch_size."""

    seconds_per_sample: float
    batch_size: int
    repeats_seconds: list[float]  # wall-clock seconds of each timed batch
    warmup: int


def time_per_sample(fn: Callable[[], object], batch_size: int, repeats: int = 5, warmup: int = 1) -> Timing:
    """Run fn() (one batch of batch_size samples) warmup times untimed, then `repeats` timed, under torch.no_grad."""
    if repeats < 5:
        raise ValueError(f"the measurement protocol takes the median of at least 5 repeats, got {repeats}")
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _synchronize()
            start = time.perf_counter()
            fn()
            _synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return Timing(statistics.median(times) / batch_size, batch_size, times, warmup)


@dataclass(frozen=True)
class PeakMemory:
    """The most memory fn() held above what was in use when it started, and how that was measured."""

    peak_bytes: int
    baseline_bytes: int
    method: str


def _peak_rss(fn: Callable[[], object]) -> PeakMemory:
    """Peak resident set size above its starting value, polled by a thread every RSS_POLL_SECONDS (a lower bound)."""
    import psutil  # a dependency of accelerate

    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(RSS_POLL_SECONDS)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    peak = max(peak, process.memory_info().rss)
    return PeakMemory(peak - baseline, baseline, f"cpu_rss_polled_{RSS_POLL_SECONDS * 1000:g}ms")


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> PeakMemory:
    """Peak memory of fn() under torch.no_grad: CUDA max_memory_allocated on a GPU, polled process RSS on CPU."""
    device = torch.device(device)
    with torch.no_grad():
        if device.type != "cuda":
            return _peak_rss(fn)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return PeakMemory(torch.cuda.max_memory_allocated(device) - baseline, baseline, "cuda_max_memory_allocated")
