"""The end of a sweep: summary metrics on the parent run and the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from omegaconf import DictConfig

from rnnsweep.contract import DIVERGED, STOPPED, SWEEP_LIMIT_TAG, TIMED_OUT, UNSUPPORTED
from rnnsweep.sweep import objective

if TYPE_CHECKING:
    from rnnsweep.tracking import Tracker


class EndedSweep(Protocol):
    """What the summary reads of the sweep that ended (its context)."""

    objective: DictConfig | None
    started_at: float
    limit_reason: str
    n_cut: int


def finish_sweep(context: EndedSweep, tracker: Tracker, parent: str,
                 check: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Summarises the sweep's own children (of ``parent``, in ``tracker``) and the trials
    it reused from earlier sweeps (a resumed sweep that reran nothing still describes every
    trial it stands for). ``check`` is called between store calls: it raises to cut the
    rest short."""
    # Imported here, not at module level: MLflow and matplotlib, which the sweep's modules
    # never load on import (the context loads the report when a sweep opens, where it can).
    from rnnsweep.report.build import write_report_safely
    from rnnsweep.report.reading import sweep_trials

    # Read once, a page at a time, as compact trials (a sweep's shared strings held
    # once), for the summary, the best trial and the report alike: an MLflow run held
    # whole is about 20 kB of objects (see Tracker.children).
    trials = sweep_trials(tracker, tracker.client.get_run(parent))
    check()
    own = [t.status for t in trials if not t.reused]
    throughputs = [t.metrics["throughput_seq_per_s"] for t in trials
                   if "throughput_seq_per_s" in t.metrics]
    summary = {
        "trials": len(trials),
        "trials_finished": own.count("FINISHED"),
        "trials_reused": len(trials) - len(own),
        "trials_failed": own.count("FAILED"),
        "trials_killed": own.count("KILLED"),
        "trials_unsupported": sum(t.outcome == UNSUPPORTED for t in trials),
        "trials_diverged": sum(t.outcome == DIVERGED for t in trials),
        "trials_stopped": sum(t.outcome == STOPPED for t in trials),
        "trials_timed_out": sum(t.outcome == TIMED_OUT for t in trials),
        "sweep_wall_s": time.time() - context.started_at,
    }
    if throughputs:
        summary["best_throughput_seq_per_s"] = max(throughputs)
    tracker.log_summary(parent, summary)
    if context.limit_reason:
        tracker.log(parent, tags={SWEEP_LIMIT_TAG: context.limit_reason})
    check()
    # The sweep's answer, whichever sweeper chose its trials (Optuna's included).
    objective.log_best(tracker, parent, context.objective, trials)
    check()
    # Never raises but through check: a failed report is a warning.
    write_report_safely(tracker, parent, trials, check)
    reused = summary["trials_reused"]
    reused_note = f" ({reused} reused)" if reused else ""
    print(f"rnnsweep: {summary['trials_finished'] + reused}/"
          f"{summary['trials']} trials finished{reused_note}, {summary['trials_failed']} failed, "
          f"{summary['trials_unsupported']} unsupported, "
          f"{summary['trials_diverged']} diverged"
          + "".join(f", {int(summary[key])} {label}" for key, label in (
              ("trials_stopped", "stopped early"), ("trials_timed_out", "timed out"))
              if summary[key])
          + (f", {context.n_cut} cut at {context.limit_reason}" if context.n_cut else "")
          + f" in {summary['sweep_wall_s']:.1f} s (parent run {parent})", flush=True)
    return summary
