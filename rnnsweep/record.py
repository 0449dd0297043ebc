"""What a trial hands back: plain data that can cross a Ray boundary and be written later."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

OK, UNSUPPORTED, FAILED = "OK", "UNSUPPORTED", "FAILED"
# On every trial's run: the hash of its config (``config_hash``), which resume matches on.
CONFIG_HASH_TAG = "rnnsweep.config_hash"
# Every training step was non-finite: the trial ran, but its numbers describe nothing.
DIVERGED = "DIVERGED"


@dataclass
class TrialRecord:
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # Per-step series: name -> values indexed by training step.
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    # Relative artifact path -> file content.
    artifacts: dict[str, bytes] = field(default_factory=dict)
    outcome: str = OK
    reason: str = ""

    @property
    def status(self) -> str:
        """The MLflow run status: an unsupported combination is a finished, recorded answer."""
        return "FAILED" if self.outcome == FAILED else "FINISHED"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.hidden_size": "256", ...}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "None" if value is None else str(value)
    return flat


# Keys that say where results go or how the sweep is run, not what a trial computes:
# two trials that differ only in these are the same measurement.
NON_IDENTITY_PREFIXES = ("tracking.", "ray.", "objective.")


def config_hash(params: dict[str, str]) -> str:
    identity = {k: v for k, v in params.items() if not k.startswith(NON_IDENTITY_PREFIXES)}
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
