"""The one number a trial hands to a sweeper, and the sweep's best trial by it.

Hydra's optimising sweepers (Optuna, Nevergrad, Ax) want the task function to return a
float. ``objective.metric`` names which of the trial's metrics that is, and
``objective.direction`` whether lower or higher is better. The full record still goes
to MLflow. A trial that failed, was unsupported or lacks the metric returns the worst
value for the direction (+inf when minimising, -inf when maximising): every sweeper
accepts it, and it steers the search away without stopping it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from rnnsweep.config.objective import DEFAULT_DIRECTION, settings
from rnnsweep.contract import OBJECTIVE_BEST_RUN_TAG, OBJECTIVE_BEST_TRIAL_TAG, OBJECTIVE_TAG, OK
from rnnsweep.record import TrialRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rnnsweep.report.model import Trial
    from rnnsweep.tracking import Tracker

log = logging.getLogger(__name__)
def worst(direction: str) -> float:
    return math.inf if direction == "minimize" else -math.inf


def value(cfg: DictConfig, record: TrialRecord) -> float:
    return score(record, *settings(cfg))


def score(record: TrialRecord, metric: str, direction: str) -> float:
    """``value`` for a trial whose settings were read from its config already (the
    launcher keeps these two strings, not each trial's config)."""
    found = record.metrics.get(metric)
    if record.outcome != OK or found is None or not math.isfinite(found):
        if record.outcome == OK:
            log.warning("objective.metric=%s: this trial has no finite %s (its metrics: %s); "
                        "returning %s", metric, metric, ", ".join(sorted(record.metrics)),
                        worst(direction))
        return worst(direction)
    return float(found)


def value_of_run(tracker: Tracker, run_id: str, cfg: DictConfig | str,
                 direction: str | None = None) -> float:
    """A trial skipped because an identical one finished: that run's value (``cfg``: the
    trial's config, or its objective metric with ``direction``, by default the config's)."""
    metric, direction = ((cfg, direction or DEFAULT_DIRECTION) if isinstance(cfg, str)
                         else settings(cfg))
    found = tracker.client.get_run(run_id).data.metrics.get(metric)
    return float(found) if found is not None and math.isfinite(found) else worst(direction)


def log_best(tracker: Tracker, parent: str, cfg: DictConfig | None,
             trials: Sequence[Trial] | None = None) -> None:
    """Logs the best trial on the parent (``best_objective``, tags naming the trial) and
    prints it: the sweep's answer, whichever sweeper chose the trials. The sweep's own
    children compete with the earlier runs it reused (a resumed sweep). ``trials``: the
    sweep's (``report.reading.sweep_trials``), where the caller has read them already."""
    metric, direction = settings(cfg)
    if trials is None:
        from rnnsweep.report.reading import sweep_trials

        trials = sweep_trials(tracker, tracker.client.get_run(parent))
    scored = [(trial.metrics[metric], trial) for trial in trials
              if trial.outcome == OK and math.isfinite(trial.metrics.get(metric, math.nan))]
    tags = {OBJECTIVE_TAG: f"{metric} ({direction})"}
    if not scored:
        tracker.log(parent, tags=tags)
        print(f"rnnsweep: no trial has a finite {metric}; no best trial")
        return
    pick = min if direction == "minimize" else max
    best, trial = pick(scored, key=lambda pair: pair[0])
    tags.update({OBJECTIVE_BEST_RUN_TAG: trial.run_id, OBJECTIVE_BEST_TRIAL_TAG: trial.name})
    tracker.log(parent, tags=tags)
    tracker.log_summary(parent, {"best_objective": best})
    print(f"rnnsweep: best {metric} ({direction}): {best:.6g} in trial {trial.name} "
          f"(run {trial.run_id})")
