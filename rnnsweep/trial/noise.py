"""Whether a timed figure can be trusted: its own spread and the machine's other load.

A median alone hides a measurement taken while something else ran. Two independent
signs are read here: the spread of the timing blocks (``torch.utils.benchmark``'s own
test: IQR above 10% of the median) and the CPU time that *other* processes used on this
trial's CPUs during the measurement window: busy time from ``/proc/stat`` (steal
included: a hypervisor's other guests count) minus this process's own from
``/proc/self/stat``. On CUDA, other processes on the device are counted where NVML can
see them.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

# torch.utils.benchmark's _IQR_WARN_THRESHOLD: IQR above 10% of the median.
IQR_LIMIT = 0.10
# CPUs' worth of other processes' time above what this trial left free: a quarter of a
# core stolen from the trial's threads is enough to move a median by several percent.
LOAD_MARGIN_CPUS = 0.25
# Fewer blocks than this give no spread to judge (an IQR of one block is 0).
MIN_BLOCKS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Load:
    """Other processes' average use of this trial's CPUs (in CPUs) over a window."""

    other_cpus: float
    cpus: int  # CPUs this process may run on
    other_device_procs: int = 0  # other processes on the CUDA device (NVML), else 0
    window_s: float = math.inf

    @property
    def resolution_cpus(self) -> float:
        """How far ``other_cpus`` can be off from counting whole jiffies alone: a tick at
        either end of the window on each CPU, and on this process's own user and system
        counts (on 2 CPUs at 100 ticks a second: 0.8 CPUs over 50 ms, 0.04 over a
        second)."""
        return (self.cpus + 2) / CLK_TCK / self.window_s


class LoadWindow:
    """``start()`` before the measurement, ``stop()`` after it."""

    def __init__(self, device_index: int | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0))
        self.device_index = device_index
        self._start: tuple[float, float, float] | None = None

    def start(self) -> None:
        self._start = (time.monotonic(), _busy_ticks(self.cpus), _own_ticks())

    def stop(self) -> Load:
        wall0, busy0, own0 = self._start or (time.monotonic(), 0.0, 0.0)
        wall = max(time.monotonic() - wall0, 1e-9)
        other_ticks = (_busy_ticks(self.cpus) - busy0) - (_own_ticks() - own0)
        other = max(0.0, other_ticks / CLK_TCK / wall)
        return Load(other, len(self.cpus), _other_device_procs(self.device_index), wall)


def verdict(median_s: float, iqr_s: float, blocks: int, load: Load | None, threads: int,
            shared: str = "") -> tuple[bool, str]:
    """``(noisy, reason)``; the reason lists every sign found, ``""`` when clean.

    ``shared`` names why the device was shared with other trials (e.g. ``exclusive=false``)."""
    reasons = []
    if median_s > 0 and iqr_s / median_s > IQR_LIMIT:
        reasons.append(f"IQR {iqr_s / median_s:.0%} of the median (limit {IQR_LIMIT:.0%})")
    if blocks < MIN_BLOCKS:
        reasons.append(f"{blocks} timing block{'s' if blocks != 1 else ''}: no spread to judge")
    if load is not None:
        free = max(0, load.cpus - threads)
        # Beyond the margin even if the counts were off by their whole resolution: a
        # short window's coarse count flags heavy load, never a tick of rounding.
        if load.other_cpus - load.resolution_cpus > free + LOAD_MARGIN_CPUS:
            reasons.append(f"other processes used {load.other_cpus:.2f} of {load.cpus} CPUs "
                           f"({free} left free by {threads} threads)")
        if load.other_device_procs:
            reasons.append(f"{load.other_device_procs} other processes on the GPU")
    if shared:
        reasons.append(f"shared its device ({shared})")
    return bool(reasons), "; ".join(reasons)


def _busy_ticks(cpus: list[int]) -> float:
    """Busy jiffies of ``cpus``: user, nice, system, irq, softirq, steal (idle and iowait
    are not busy; guest time is already inside user)."""
    wanted = {f"cpu{i}" for i in cpus}
    total = 0.0
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in wanted:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                total += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return 0.0
    return total


def _own_ticks() -> float:
    """This process's user + system jiffies, all threads (fields 14 and 15)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return float(int(fields[11]) + int(fields[12]))
    except (OSError, ValueError, IndexError):
        return 0.0


def _other_device_procs(index: int | None) -> int:
    if index is None:
        return 0
    try:
        import pynvml  # an optional extra (nvidia-ml-py); torch uses it for the same purpose
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # noqa: BLE001 - no NVML, no answer: the CPU load test still applies
        return 0
    # Inside a container NVML reports host PIDs; after timing, this process holds a context
    # on the device, so every entry but one is another process.
    return max(0, len(procs) - 1)
