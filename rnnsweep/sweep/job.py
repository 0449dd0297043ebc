"""The Hydra task function: run one trial and record it."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rnnsweep.record import TrialRecord

# Set in Ray workers: the record travels back to the driver, which writes it, so workers
# need neither the driver's filesystem nor write access to the store.
RECORDS_TO_DRIVER_ENV = "RNNSWEEP_RECORDS_TO_DRIVER"


def task(cfg: DictConfig) -> TrialRecord | float:
    """Runs one trial and returns ``objective.metric`` for a sweeper (in a Ray worker,
    the record itself: the launcher writes it and hands the sweeper the number)."""
    # Imported here, not at the top: a Ray worker unpickles this module before its first
    # trial and never needs MLflow, and the Ray driver never needs torch. Each costs
    # seconds of start-up on the sweep's critical path.
    from rnnsweep.trial.run import run_trial

    record = run_trial(cfg)
    if os.environ.get(RECORDS_TO_DRIVER_ENV):
        return record
    from rnnsweep.tracking import Tracker, current_parent_run

    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    run_id = tracker.start_run(trial_name(), parent_run_id=current_parent_run())
    tracker.write_record(run_id, record)
    print(summary_line(trial_name(), record))
    from rnnsweep.sweep import objective

    return objective.value(cfg, record)


def trial_name(overrides: Sequence[str] | None = None) -> str:
    """The trial's own overrides (``batch=8,model=gru``), or ``trial`` for a plain run."""
    if overrides is None:
        try:
            overrides = HydraConfig.get().overrides.task
        except ValueError:  # not inside a Hydra job (called from Python)
            return "trial"
    return ",".join(o for o in overrides if not o.startswith(("hydra.", "+sweep="))) or "trial"


def summary_line(name: str, record: TrialRecord) -> str:
    shown = ("latency_ms", "latency_ms_per_seq", "throughput_seq_per_s", "step_time_ms",
             "final_loss", "nonfinite_steps")
    values = "  ".join(f"{k}={record.metrics[k]:.4g}" for k in shown if k in record.metrics)
    reason = f"  ({record.reason})" if record.reason else ""
    return f"[{record.outcome}] {name}  {values}{reason}"
