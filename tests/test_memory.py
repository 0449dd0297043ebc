"""Per-trial peak memory: each trial's own high-water mark, whatever ran before it in the
same process (Ray reuses workers, so the process-wide ``ru_maxrss`` only ever rises)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOY, compose_cfg

from rnnsweep.trial import environment
from rnnsweep.trial.run import run_trial

CPU = torch.device("cpu")
BIG = ["model.hidden_size=512", "model.input_size=256", "batch=64", "seq_len=60", "steps=2",
       "workload=train", "hardware=cpu"]
SMALL = ["workload=train", "hardware=cpu", "steps=2"]


def _touch(mib: int) -> np.ndarray:
    return np.ones(mib * 2**20 // 8)  # written, so resident


def test_a_small_trial_after_a_large_one_reports_less():
    big = run_trial(compose_cfg([*TOY, *BIG]))
    small = run_trial(compose_cfg([*TOY, *SMALL]))
    assert big.outcome == small.outcome == "OK", (big.reason, small.reason)
    assert big.tags["rnnsweep.peak_mem_kind"].startswith("rss_above_start")
    assert small.metrics["peak_mem_mb"] < big.metrics["peak_mem_mb"] / 2, (
        small.metrics, big.metrics)
    # The process's own high-water mark was reset too: not stuck at the large trial's.
    assert small.metrics["peak_rss_mb"] <= big.metrics["peak_rss_mb"]


@pytest.mark.parametrize("kernel_reset", [True, False], ids=["vmhwm", "sampled"])
def test_peak_covers_what_the_window_allocated_and_no_more(monkeypatch, kernel_reset):
    if not kernel_reset:
        monkeypatch.setattr(environment, "_reset_rss_high_water", lambda: False)
    held = _touch(300)  # allocated before the window: not this window's memory
    peak = environment.PeakMemory(CPU)
    peak.start()
    block = _touch(200)
    if not kernel_reset:
        import time
        time.sleep(0.05)  # the sampler's chance to see it
    del block
    first = peak.stop()
    peak = environment.PeakMemory(CPU)
    peak.start()
    _touch(20)
    second = peak.stop()
    del held
    assert 190 <= first["peak_mem_mb"] < 300, first
    assert second["peak_mem_mb"] < 60, second
