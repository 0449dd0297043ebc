"""Early stopping: the rules that end a trial before its last step.

The launcher feeds every stopper the live intermediate values of ``objective.metric``
(``report``) as they arrive from the trials, and asks it nothing else: a stopper that
returns a reason ends that trial with outcome ``STOPPED``. A sweeper (rnnsweep's Optuna
sweeper) installs its own stopper on the launcher (``launcher.stopper``) to prune.
"""

from __future__ import annotations

from typing import Protocol


class Stopper(Protocol):
    def report(self, idx: int, step: int, value: float) -> str | None:
        """Trial ``idx`` measured ``value`` (its objective metric, in the objective's own
        direction as configured) at training ``step``: a reason to stop it, or None."""

    def finished(self, idx: int) -> None:
        """Trial ``idx`` is over (ran to its end, stopped, failed or killed)."""
