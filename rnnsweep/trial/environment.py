"""Tags describing where a trial ran. Only hardware and library facts: never env vars."""

from __future__ import annotations

import platform
import resource
import socket
import threading
from pathlib import Path

import torch

from rnnsweep import contract, heap
from rnnsweep.contract import DEVICE_TAG, NUM_THREADS_TAG, to_tag


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_tags(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # torch.backends' cudnn and mkldnn queries carry no annotations.
    cudnn = (torch.backends.cudnn.is_available()  # type: ignore[no-untyped-call]
             if device.type == "cuda" else False)
    return {
        DEVICE_TAG: name,
        contract.TORCH_VERSION_TAG: str(torch.__version__),
        contract.CUDA_VERSION_TAG: str(torch.version.cuda),
        contract.CUDNN_TAG: (str(torch.backends.cudnn.version())  # type: ignore[no-untyped-call]
                             if cudnn else "unavailable"),
        contract.ONEDNN_TAG: str(torch.backends.mkldnn.is_available()),  # type: ignore[no-untyped-call]
        contract.CPU_MODEL_TAG: cpu_model(),
        contract.HOST_TAG: socket.gethostname(),
        contract.PYTHON_TAG: platform.python_version(),
        NUM_THREADS_TAG: to_tag(torch.get_num_threads()),
    }


# --- peak memory ------------------------------------------------------------------------------
# Ray reuses worker processes, so the process-wide ``ru_maxrss`` only ever rises in the order
# trials ran. On CPU the kernel's own high-water mark (VmHWM) is reset at the trial's start
# by writing "5" to /proc/self/clear_refs (Linux >= 4.0): exact, and free during the trial.
# Where that file is not writable, a thread samples VmRSS every few milliseconds instead.
SAMPLE_S = 0.002


class PeakMemory:
    """The trial's own peak memory: on CUDA, ``max_memory_allocated`` since the trial's start;
    on CPU, the process's resident high-water mark minus its resident size at the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_mb = 0.0
        self.kind = ""
        self._sampler: _RssSampler | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            return
        # Memory earlier trials freed goes back to the OS (glibc keeps it otherwise), so this
        # trial's allocations show above its starting point instead of reusing that slack.
        heap.give_back()
        self.start_mb = _status_mb("VmRSS")
        if _reset_rss_high_water():
            self.kind = "rss_above_start_vmhwm"
        else:
            self._sampler = _RssSampler()
            self._sampler.start()
            self.kind = "rss_above_start_sampled"

    def stop(self) -> dict[str, float]:
        """``peak_mem_mb`` (the trial's own) and, on CPU, ``peak_rss_mb`` (the process's)."""
        if self.device.type == "cuda":
            return {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}
        if self._sampler is not None:
            peak = max(self._sampler.stop(), _status_mb("VmRSS"))
        else:
            peak = _status_mb("VmHWM")
        return {"peak_mem_mb": max(0.0, peak - self.start_mb), "peak_rss_mb": peak}


def _reset_rss_high_water() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` size in MiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if field == "VmHWM" else 0.0


class _RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="rnnsweep-rss-sampler", daemon=True)
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.peak = max(self.peak, _status_mb("VmRSS"))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak
