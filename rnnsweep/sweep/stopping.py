"""Early stopping: the rules that end a trial before its last step.

The launcher feeds every stopper the live intermediate values of ``objective.metric``
(``report``) as they arrive from the trials, and asks it nothing else: a stopper that
returns a reason ends that trial with outcome ``STOPPED``. A sweeper (rnnsweep's Optuna
sweeper) installs its own stopper on the launcher (``launcher.stopper``) to prune.
"""

from __future__ import annotations

import math
import statistics
from typing import Protocol


class Stopper(Protocol):
    def report(self, idx: int, step: int, value: float) -> str | None:
        """Trial ``idx`` measured ``value`` (its objective metric, in the objective's own
        direction as configured) at training ``step``: a reason to stop it, or None."""

    def finished(self, idx: int) -> None:
        """Trial ``idx`` is over (ran to its end, stopped, failed or killed)."""


STOPPERS = ("none", "asha", "median")
# Live names of objective metrics whose final value is the last of a per-step series.
LIVE_NAMES = {"final_loss": "loss", "bits_per_char": "loss"}


def live_name(metric: str) -> str:
    """The per-step series that a stopper judges ``objective.metric`` by."""
    return LIVE_NAMES.get(metric, metric)


def default_grace(steps: int) -> int:
    return max(steps // 10, 1)


class Asha:
    """Asynchronous successive halving (Li et al. 2018; Ray Tune's ASHAScheduler): rungs
    at ``grace * rf**k`` steps below ``max_steps``. A trial's value at each rung it reaches
    is recorded there, and it goes on only while that value is within the best ``1/rf``
    of the values recorded at that rung. Asynchronous: no trial waits for a rung to fill.

    Unlike a promotion in the paper's ASHA, passing a rung is not final: a trial is
    judged again at every rung it has passed each time it reports, so one that reached a
    rung first (with nobody to be judged against) stops once better trials get there.
    A grid walked in order, each trial better than the last, is then halved as a random
    sample would be; the best trial is never stopped."""

    def __init__(self, direction: str, max_steps: int, grace: int, rf: int) -> None:
        self.sign = 1.0 if direction == "minimize" else -1.0  # lower is better inside
        self.rf = rf
        self.rungs: list[int] = []
        rung = grace
        while rung < max_steps:
            self.rungs.append(rung)
            rung *= rf
        self.seen: dict[int, list[float]] = {rung: [] for rung in self.rungs}
        self.at: dict[int, dict[int, float]] = {}  # trial -> rung -> its value there

    def report(self, idx: int, step: int, value: float) -> str | None:
        done = step + 1
        mine = self.at.setdefault(idx, {})
        for rung in self.rungs:
            if rung <= done and rung not in mine:
                mine[rung] = self.sign * value if math.isfinite(value) else math.inf
                self.seen[rung].append(mine[rung])
        for rung, own in mine.items():
            recorded = self.seen[rung]
            if len(recorded) < 2:
                continue
            keep = max(len(recorded) // self.rf, 1)
            cutoff = sorted(recorded)[keep - 1]
            if own > cutoff:
                return (f"asha: at rung {rung} steps its value {self.sign * own:.6g} is not "
                        f"within the best 1/{self.rf} of the {len(recorded)} trials that "
                        f"reached it (cut-off {self.sign * cutoff:.6g})")
        return None

    def finished(self, idx: int) -> None:
        pass  # its values stay at their rungs: later trials are judged against them


class MedianRule:
    """The median stopping rule (Golovin et al. 2017, Google Vizier; Ray Tune's
    MedianStoppingRule): after ``grace`` steps, a trial whose best value so far is worse
    than the median of the other trials' running means up to the same step is stopped,
    once at least ``min_trials`` others are past their grace period. Judged at every
    report."""

    def __init__(self, direction: str, grace: int, min_trials: int) -> None:
        self.sign = 1.0 if direction == "minimize" else -1.0
        self.grace, self.min_trials = grace, min_trials
        self.history: dict[int, list[tuple[int, float]]] = {}  # trial -> (step, value)

    def report(self, idx: int, step: int, value: float) -> str | None:
        mine = self.sign * value if math.isfinite(value) else math.inf
        self.history.setdefault(idx, []).append((step, mine))
        if step + 1 < self.grace:
            return None
        # Every other trial past its own grace period counts, with its running mean up
        # to this step or as far as it got: one that is behind is not waited for (a
        # trial that stays ahead would never be judged), and its mean of fewer, earlier
        # values only leans in this trial's favour.
        means = [statistics.fmean(upto) for other, points in self.history.items()
                 if other != idx and points[-1][0] + 1 >= self.grace
                 and (upto := [v for s, v in points if s <= step])]
        if len(means) < self.min_trials:
            return None
        median = statistics.median(means)
        best = min(v for _, v in self.history[idx])
        if best > median:
            return (f"median: at step {step} its best value {self.sign * best:.6g} is worse "
                    f"than the median {self.sign * median:.6g} of {len(means)} other trials' "
                    "running means")
        return None

    def finished(self, idx: int) -> None:
        pass  # its history stays: later trials are judged against it too


def make(name: str, direction: str, max_steps: int, grace: int | None, rf: int,
         min_trials: int) -> Stopper | None:
    grace = grace or default_grace(max_steps)
    if name == "asha":
        return Asha(direction, max_steps, grace, rf)
    if name == "median":
        return MedianRule(direction, grace, min_trials)
    return None
