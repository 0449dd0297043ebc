"""Tags describing where a trial ran. Only hardware and library facts: never env vars."""

from __future__ import annotations

import platform
import resource
import socket
from pathlib import Path

import torch


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
    cudnn = torch.backends.cudnn.is_available() if device.type == "cuda" else False
    return {
        "rnnsweep.device": name,
        "rnnsweep.torch_version": torch.__version__,
        "rnnsweep.cuda_version": str(torch.version.cuda),
        "rnnsweep.cudnn": str(torch.backends.cudnn.version()) if cudnn else "unavailable",
        "rnnsweep.onednn": str(torch.backends.mkldnn.is_available()),
        "rnnsweep.cpu_model": cpu_model(),
        "rnnsweep.host": socket.gethostname(),
        "rnnsweep.python": platform.python_version(),
        "rnnsweep.num_threads": str(torch.get_num_threads()),
    }


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory and what it measures: tensor memory on CUDA, process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux; it covers the whole process, Python included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
