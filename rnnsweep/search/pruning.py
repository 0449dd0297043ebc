"""Optuna's pruners as the launcher's stopper: each running trial's live values of
``objective.metric`` are reported to its Optuna trial as they arrive from Ray, and a trial
the pruner would prune is stopped there and then. Trials of one batch run in parallel on
Ray, so a pruner that compares trials at the same step (successive halving, hyperband)
judges them against each other as they go, not only against finished ones."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


class PrunerStopper:
    """Implements ``rnnsweep.sweep.stopping.Stopper`` for the trials of one batch."""

    def __init__(self, trials: dict[int, optuna.trial.Trial], pruner: str, metric: str) -> None:
        self.trials, self.pruner, self.metric = trials, pruner, metric
        self.pruned: dict[int, int] = {}  # job idx -> the step it was pruned at
        self.reported: dict[int, int] = {}  # job idx -> values reported
        self._lock = threading.Lock()  # the launcher may report from more than one thread

    def report(self, idx: int, step: int, value: float) -> str | None:
        trial = self.trials.get(idx)
        if trial is None or not math.isfinite(value):
            return None  # a non-finite value is the trial's guard's business, not the pruner's
        with self._lock:
            if idx in self.pruned:
                return None
            trial.report(float(value), int(step))
            self.reported[idx] = self.reported.get(idx, 0) + 1
            if not trial.should_prune():
                return None
            self.pruned[idx] = int(step)
        return (f"optuna {self.pruner} pruner: trial {trial.number} pruned at step {step} "
                f"({self.metric}={value:.6g})")

    def finished(self, idx: int) -> None:
        with self._lock:
            self.trials.pop(idx, None)
