"""The Hydra task function: run one trial and record it."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from rnnsweep.contract import CONFIG_HASH_TAG, OUTCOME_TAG, REASON_TAG, TIMED_OUT
from rnnsweep.record import TrialRecord, config_hash, flatten
from rnnsweep.sweep import interrupts, objective
from rnnsweep.sweep.naming import trial_name
from rnnsweep.trial import live

if TYPE_CHECKING:
    from rnnsweep.sweep.context import SweepContext


class SweepTask:
    """The Hydra task function: runs one trial. With a sweep context (in the driver's own
    process: a single run, or Hydra's basic launcher) it also records the trial there;
    without one (in a Ray worker) it hands the record back, and the driver records it,
    so workers need neither the driver's filesystem nor write access to the store.

    Where it records the trial itself it returns ``objective.metric``, the one number a
    sweeper wants; the launcher does the same with the records it gets back."""

    def __init__(self, context: SweepContext | None = None) -> None:
        self.context = context

    def __call__(self, cfg: DictConfig) -> TrialRecord | float:
        if self.context is not None:
            # Hydra's basic launcher runs the trials one after another here: a stop that
            # something caught on its way out (a user's Hydra callback) starts no more.
            interrupts.check()
        record = run_limited(cfg) if self.context is not None else _run(cfg)
        if self.context is not None:
            # Imported here: the worker module imports Ray, which a single run never starts.
            from rnnsweep.sweep.worker import node_fingerprint

            self.context.record_here(trial_name(), record, node_fingerprint())
            return objective.value(cfg, record)
        return record

    def for_workers(self) -> SweepTask:
        """What travels to Ray's workers: the task without the driver's context."""
        return SweepTask()

    def __getstate__(self) -> dict:
        # The context holds MLflow clients, threads and locks; it never leaves the driver.
        return {"context": None}


def _run(cfg: DictConfig) -> TrialRecord:
    # Imported here, not at the top: a Ray worker unpickles this module before its
    # first trial and never needs MLflow, and the Ray driver never needs torch.
    from rnnsweep.trial.run import run_trial

    return run_trial(cfg)


# After a stop request (a stopper's, a time limit's), how long a trial has to end on its
# own, with its record. A single run's trial past it is left on its thread; a sweep's
# (which has one live interval more, for its worker to ask) has its worker killed, and the
# launcher records it from what it sent.
STOP_GRACE_S = 5.0


def run_limited(cfg: DictConfig) -> TrialRecord:
    """A trial in this process (a single run), held to ``trial_timeout_s`` as the launcher
    holds its trials: asked to stop at its limit, it ends TIMED_OUT with its partial
    metrics; one that does not stop (hung) is left on its thread, recorded from the
    values it reported, and ends with the process."""
    limit = OmegaConf.select(cfg, "trial_timeout_s")
    if not limit:
        return _run(cfg)
    watched = live.Live()
    done: dict[str, TrialRecord] = {}

    def trial() -> None:
        with live.activated(watched):
            done["record"] = _run(cfg)

    started = time.time()
    thread = threading.Thread(target=trial, name="rnnsweep-trial", daemon=True)
    thread.start()
    thread.join(limit)
    reason = f"trial_timeout_s={limit:g}: still running after {limit:g} s"
    if thread.is_alive():
        watched.request_stop(TIMED_OUT, reason)
        thread.join(STOP_GRACE_S)
    if "record" in done:
        return done["record"]
    rows = watched.drain()
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if not isinstance(container, dict):  # a DictConfig always converts to a dict
        raise TypeError(f"expected a mapping, got {type(container).__name__}")
    # OmegaConf allows any primitive as a key; the schema's keys are all names.
    params = flatten(cast(dict[str, Any], container))
    record = TrialRecord(params=params, outcome=TIMED_OUT, started_at=started,
                         finished_at=time.time(),
                         reason=f"{reason}; it did not stop when asked, and was left")
    record.tags = {CONFIG_HASH_TAG: config_hash(record.params), OUTCOME_TAG: TIMED_OUT,
                   REASON_TAG: record.reason}
    series: dict[str, list[float]] = {}
    for _, values in rows:  # steps in order from 0: a dense series
        for name, value in values.items():
            series.setdefault(name, []).append(value)
    record.step_metrics = {k: v for k, v in series.items() if len(v) == len(rows)}
    if "loss" in series:
        record.metrics["final_loss"] = series["loss"][-1]
    return record
