"""Honest timings: warm-up, device synchronisation, repeated blocks, median, and a noise
verdict on each (``rnnsweep.trial.noise``).

``torch.utils.benchmark.Timer`` synchronises CUDA around each block and pins the thread
count, which is what a fair side-by-side comparison needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils import common

from rnnsweep.trial.noise import MIN_BLOCKS, Load, LoadWindow, verdict

# What the reported figure is: a block's mean per call, median over blocks.
STATISTIC = "blocks (torch.utils.benchmark.Timer.blocked_autorange)"


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    blocks: int
    times_s: list[float] = field(default_factory=list)  # per call, one entry per block
    load: Load | None = None
    threads: int = 1

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    def verdict(self, shared: str = "") -> tuple[bool, str]:
        return verdict(self.median_s, self.iqr_s, self.blocks, self.load, self.threads, shared)


def time_call(fn: Callable[[], object], device: torch.device, num_threads: int,
              warmup: int, min_run_time: float) -> Timing:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    window = LoadWindow(device.index or 0 if device.type == "cuda" else None)
    window.start()
    measurement = _at_least(MIN_BLOCKS, timer, timer.blocked_autorange(min_run_time=min_run_time))
    load = window.stop()
    return Timing(measurement.median, measurement.iqr, len(measurement.times),
                  list(measurement.times), load, num_threads)


def _at_least(blocks: int, timer: benchmark.Timer,
              measurement: common.Measurement) -> common.Measurement:
    """A call slower than ``min_run_time`` fills one block, which has no spread: time more
    blocks of the same size so the IQR (and compare's interval) has something to say."""
    raw = list(measurement.raw_times)
    while len(raw) < blocks:
        raw += timer.timeit(measurement.number_per_run).raw_times
    return common.Measurement(measurement.number_per_run, raw, measurement.task_spec)


def matmul_gflops(device: torch.device, num_threads: int, size: int = 1024,
                  min_run_time: float = 0.3) -> float:
    """The machine's dense fp32 matmul rate: the ceiling achieved FLOP/s is compared to."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    timing = time_call(lambda: a @ b, device, num_threads, warmup=2, min_run_time=min_run_time)
    return 2 * size**3 / timing.median_s / 1e9
