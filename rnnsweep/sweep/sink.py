"""What the launcher tells the world about a sweep's trials, and nothing more.

The launcher schedules, waits and collects; it knows nothing of MLflow or of the
terminal. Everything that records or shows a trial is a sink: the MLflow store is one,
the console's progress display another. Sinks never raise into the launcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rnnsweep.record import TrialRecord


@dataclass(frozen=True)
class TrialInfo:
    idx: int
    name: str  # the trial's swept keys only, e.g. "batch=8,model=gru"
    overrides: tuple[str, ...] = ()
    params: dict[str, str] = field(default_factory=dict, compare=False)
    # Tags its run starts with (config hash, resource request).
    tags: dict[str, str] = field(default_factory=dict, compare=False)


class SweepSink(Protocol):
    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        """The trials are on their way (before any of them starts)."""

    def started(self, idx: int, info: dict | None = None) -> None:
        """A worker began running trial ``idx`` (``info``: where and when, its
        ``attempt``: 0, or how many times its worker died before)."""

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        """Trial ``idx`` (``info``: reused trials are never submitted) was not run: an
        identical trial already finished as ``run_id``."""

    def finished(self, idx: int, record: TrialRecord) -> None:
        """Trial ``idx`` ended with ``record`` (its outcome may be FAILED)."""

    def cancelled(self, idx: int, reason: str, outcome: str = "KILLED") -> None:
        """Trial ``idx`` was ended before it finished, and before it could say so itself
        (interrupt, the sweep's time limit, a hung trial past its own: ``outcome``)."""

    # Optional, asked only of sinks that have them:
    # ``live(self, idx, rows, total_steps) -> None``: a running trial's latest per-step
    #   values, ``[(step, {metric: value})]``, every ``tracking.live_interval_s``;
    # ``ended(self) -> None``, once, when the sweep is over however it ended (the
    #   console's closing table).
