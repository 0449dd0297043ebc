"""What produced a trial's numbers, as one short string: resume reuses a finished trial
only where the same fingerprint would be measured again."""

from __future__ import annotations

import hashlib
import json
import os

import torch

from rnnsweep.trial.environment import cpu_model
from rnnsweep.version import __version__


def environment() -> dict[str, str]:
    """The facts that change a measurement: the device model, torch and CUDA, rnnsweep
    itself, and the node's CPU count. The trial's own thread count is in its config
    (``hardware.num_cpus``), hence already in its config hash."""
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else cpu_model(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda),
        "rnnsweep": __version__,
        "cpus": str(os.cpu_count()),
    }


def fingerprint() -> str:
    blob = json.dumps(environment(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
