"""What a trial hands back: plain data that can cross a Ray boundary and be written later."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# The outcomes and the tags that carry them live with the rest of the contract; they are
# named here too because a record is where a reader meets them first.
from rnnsweep.contract import (
    CONFIG_HASH_TAG,
    DIVERGED,
    FAILED,
    KILLED,
    OK,
    OUTCOME_TAG,
    REASON_TAG,
    STOPPED,
    TIMED_OUT,
    UNSUPPORTED,
)

__all__ = ["CONFIG_HASH_TAG", "DIVERGED", "FAILED", "KILLED", "NON_IDENTITY_PREFIXES", "OK",
           "OUTCOME_TAG", "REASON_TAG", "RUN_STATUS", "STOPPED", "TIMED_OUT", "UNSUPPORTED",
           "TrialRecord", "config_hash", "flatten"]

# The MLflow run status of each outcome that is not FINISHED.
RUN_STATUS = {FAILED: "FAILED", TIMED_OUT: "KILLED", KILLED: "KILLED"}


@dataclass
class TrialRecord:
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # Per-step series: name -> values indexed by training step.
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    # Series measured at some steps only (held-out evaluation): name -> {step: value}.
    sparse_metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    # Relative artifact path -> file content.
    artifacts: dict[str, bytes] = field(default_factory=dict)
    outcome: str = OK
    reason: str = ""
    # When the trial ran (epoch seconds, on its worker): its run's start and end.
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def status(self) -> str:
        """The MLflow run status: an unsupported, diverged or stopped trial is a finished,
        recorded answer; a failed one FAILED, a timed-out or killed one KILLED."""
        return RUN_STATUS.get(self.outcome, "FINISHED")


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
NON_IDENTITY_PREFIXES = ("tracking.", "ray.", "objective.", "checkpoint.", "trial_timeout_s",
                         "sweep_timeout_s")


def config_hash(params: dict[str, str]) -> str:
    identity = {k: v for k, v in params.items() if not k.startswith(NON_IDENTITY_PREFIXES)}
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
