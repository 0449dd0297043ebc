"""The Hydra task function: run one trial and record it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rnnsweep.record import TrialRecord

if TYPE_CHECKING:
    from rnnsweep.sweep.context import SweepContext


class SweepTask:
    """The Hydra task function: runs one trial. With a sweep context (in the driver's own
    process: a single run, or Hydra's basic launcher) it also records the trial there;
    without one (in a Ray worker) it hands the record back, and the driver records it,
    so workers need neither the driver's filesystem nor write access to the store."""

    def __init__(self, context: SweepContext | None = None) -> None:
        self.context = context

    def __call__(self, cfg: DictConfig) -> TrialRecord:
        # Imported here, not at the top: a Ray worker unpickles this module before its
        # first trial and never needs MLflow, and the Ray driver never needs torch.
        from rnnsweep.trial.run import run_trial

        record = run_trial(cfg)
        if self.context is not None:
            from rnnsweep.sweep.worker import node_fingerprint

            self.context.record_here(trial_name(), record, node_fingerprint())
        return record

    def for_workers(self) -> SweepTask:
        """What travels to Ray's workers: the task without the driver's context."""
        return SweepTask()

    def __getstate__(self) -> dict:
        # The context holds MLflow clients, threads and locks; it never leaves the driver.
        return {"context": None}


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
