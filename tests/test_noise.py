"""Noise verdicts: a timed figure measured beside other load, or with a wide spread, or on
a shared device, is tagged ``rnnsweep.timing.noisy=true`` with the reason.

This machine is shared and busy: the tests assert "flagged when loaded", never "clean
when idle"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TOY, compose_cfg

from rnnsweep.trial.noise import IQR_LIMIT, Load, verdict
from rnnsweep.trial.run import run_trial

BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
# Enough training steps that the phase spans several of /proc/stat's 10 ms ticks: over a
# shorter window, other processes' load cannot be measured at all.
TIMED = [*TOY, "workload=train_bench", "hardware=cpu", "hardware.num_cpus=1",
         "min_run_time=0.5", "steps=400"]


@pytest.fixture
def burners():
    """Two CPU-bound processes per core, started here and ended by their own PIDs: with
    one per core, the trial's thread and the burners share the cores about evenly and the
    load sits at the verdict's threshold."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN])
             for _ in range(2 * len(os.sched_getaffinity(0)))]
    try:
        # Burning before the trial starts: its training phase lasts milliseconds, less
        # than an interpreter's start-up.
        deadline = time.monotonic() + 30
        while min(_cpu_seconds(p.pid) for p in procs) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_trial_timed_beside_cpu_burners_is_flagged(burners):
    record = run_trial(compose_cfg(TIMED))
    assert record.outcome == "OK", record.reason
    assert record.tags["rnnsweep.timing.noisy"] == "true"
    reason = record.tags["rnnsweep.timing.noise_reason"]
    assert "latency_ms: " in reason and "step_time_ms: " in reason  # each timed figure
    assert "other processes used" in reason
    # The burners alone take most of the cores; whatever else runs here only adds to it.
    assert record.metrics["latency_other_cpus"] >= 0.75
    assert record.metrics["step_time_other_cpus"] >= 0.75
    assert record.metrics["latency_blocks"] >= 1
    assert len(record.step_metrics["timing/latency_ms"]) >= 1


def test_a_call_slower_than_min_run_time_still_gets_blocks_to_judge():
    import time

    import torch

    from rnnsweep.trial import timing
    from rnnsweep.trial.noise import MIN_BLOCKS

    slow = timing.time_call(lambda: time.sleep(0.06), torch.device("cpu"), 1, 0, 0.05)
    assert slow.blocks == len(slow.times_s) == MIN_BLOCKS
    assert 0.05 < slow.median_s < 1.0


def test_a_trial_on_a_device_it_shared_is_flagged():
    record = run_trial(compose_cfg([*TIMED, "min_run_time=0.05", "hardware.exclusive=false"]))
    assert record.tags["rnnsweep.timing.noisy"] == "true"
    assert "shared its device (hardware.exclusive=false)" in record.tags[
        "rnnsweep.timing.noise_reason"]


QUIET = Load(other_cpus=0.0, cpus=2)


@pytest.mark.parametrize(("iqr", "blocks", "load", "threads", "shared", "noisy", "says"), [
    (0.05, 10, QUIET, 2, "", False, ""),
    (IQR_LIMIT * 1.5, 10, QUIET, 2, "", True, "IQR 15% of the median"),
    (0.0, 1, QUIET, 2, "", True, "1 timing block"),
    (0.05, 10, Load(1.0, 2), 2, "", True, "other processes used 1.00 of 2 CPUs"),
    (0.05, 10, Load(1.5, 2), 1, "", True, "1 left free by 1 threads"),
    (0.05, 10, Load(0.5, 2), 1, "", False, ""),  # the idle core absorbed it
    (0.05, 10, Load(0.0, 2, other_device_procs=2), 1, "", True, "2 other processes on the GPU"),
    (0.05, 10, QUIET, 2, "trials_beside=1", True, "shared its device (trials_beside=1)"),
    # Two CPUs over 50 ms are 10 jiffies, counted to within 0.8 CPUs: 0.6 CPUs of other
    # load there may be rounding; over 0.2 s (within 0.2) it is load. Heavy load is
    # flagged over either window.
    (0.05, 10, Load(0.6, 2, window_s=0.05), 2, "", False, ""),
    (0.05, 10, Load(0.6, 2, window_s=0.2), 2, "", True, "other processes used 0.60"),
    (0.05, 10, Load(1.5, 2, window_s=0.05), 2, "", True, "other processes used 1.50"),
])
def test_verdict_rules(iqr, blocks, load, threads, shared, noisy, says):
    got, reason = verdict(1.0, iqr, blocks, load, threads, shared)
    assert got is noisy
    assert (says in reason) if says else reason == ""
