"""The Hydra task function: run one trial and record it."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rnnsweep.contract import CONFIG_HASH_TAG, OUTCOME_TAG, REASON_TAG, TIMED_OUT
from rnnsweep.record import NON_IDENTITY_PREFIXES, TrialRecord, config_hash, flatten

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
        # Imported here, not at the top: a Ray worker unpickles this module before its
        # first trial and never needs MLflow, and the Ray driver never needs torch.
        record = run_limited(cfg) if self.context is not None else _run(cfg)
        if self.context is not None:
            from rnnsweep.sweep.worker import node_fingerprint

            self.context.record_here(trial_name(), record, node_fingerprint())
            from rnnsweep.sweep import objective

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


# After a single run's time limit, how long its trial has to stop before it is left.
STOP_GRACE_S = 5.0


def run_limited(cfg: DictConfig) -> TrialRecord:
    """A trial in this process (a single run), held to ``trial_timeout_s`` as the launcher
    holds its trials: asked to stop at its limit, it ends TIMED_OUT with its partial
    metrics; one that does not stop (hung) is left on its thread, recorded from the
    values it reported, and ends with the process."""
    from rnnsweep.trial import live

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
    record = TrialRecord(params=flatten(container), outcome=TIMED_OUT, started_at=started,
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


def trial_name(overrides: Sequence[str] | None = None,
               swept: Collection[str] | None = None) -> str:
    """A trial's name: its overrides of the keys ``swept`` across its sweep
    (``batch=8,model=gru``), or ``trial`` when none is.

    Without ``swept`` (a trial that cannot see its sweep's other trials, such as a job of
    Hydra's basic launcher) every override the user gave is kept except where results go
    (``tracking.*``, ``ray.*``). Called with no arguments inside a Hydra job, the job's
    own overrides are used.
    """
    if overrides is None:
        try:
            overrides = HydraConfig.get().overrides.task
        except ValueError:  # not inside a Hydra job (called from Python)
            return "trial"
    named = [o for o in overrides if _named(o, swept)]
    return ",".join(named) or "trial"


def trial_names(overrides_per_trial: Sequence[Sequence[str]]) -> list[str]:
    """Every trial of a sweep named by the keys that vary across it, and only those."""
    swept = swept_keys(overrides_per_trial)
    return [trial_name(overrides, swept) for overrides in overrides_per_trial]


def swept_keys(overrides_per_trial: Sequence[Sequence[str]]) -> set[str]:
    """The keys whose value differs between trials, or that some trials leave at the
    default; a key every trial sets alike is the sweep's setting, not a trial's name."""
    values: dict[str, set[str]] = {}
    for overrides in overrides_per_trial:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    every = [{o.partition("=")[0] for o in overrides} for overrides in overrides_per_trial]
    return {key for key, seen in values.items()
            if len(seen) > 1 or any(key not in keys for keys in every)}


def _named(override: str, swept: Collection[str] | None) -> bool:
    key = override.partition("=")[0]
    if key.startswith("hydra.") or key in ("+sweep", "sweep"):
        return False
    if swept is not None:
        return key in swept
    return not key.startswith(NON_IDENTITY_PREFIXES)
