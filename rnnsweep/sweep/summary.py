"""The end of a sweep: summary metrics on the parent run and the report."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rnnsweep.record import DIVERGED
from rnnsweep.sweep import objective

if TYPE_CHECKING:
    from rnnsweep.sweep.context import SweepContext


def finish_sweep(context: SweepContext) -> dict[str, float]:
    """Summarises the sweep's own children and the trials it reused from earlier sweeps
    (a resumed sweep that reran nothing still describes every trial it stands for)."""
    tracker, parent = context.tracker, context.parent
    children = tracker.children(parent)
    reused = [tracker.client.get_run(run_id)
              for run_id in sorted(set(context.reused_runs.values()))]
    statuses = [run.info.status for run in children]
    throughputs = [run.data.metrics["throughput_seq_per_s"] for run in children + reused
                   if "throughput_seq_per_s" in run.data.metrics]
    summary = {
        "trials": len(children) + len(reused),
        "trials_finished": statuses.count("FINISHED"),
        "trials_reused": len(reused),
        "trials_failed": statuses.count("FAILED"),
        "trials_killed": statuses.count("KILLED"),
        "trials_unsupported": sum(run.data.tags.get("rnnsweep.outcome") == "UNSUPPORTED"
                                  for run in children + reused),
        "trials_diverged": sum(run.data.tags.get("rnnsweep.outcome") == DIVERGED
                               for run in children + reused),
        "sweep_wall_s": time.time() - context.started_at,
    }
    if throughputs:
        summary["best_throughput_seq_per_s"] = max(throughputs)
    tracker.log_summary(parent, summary)
    # The sweep's answer, whichever sweeper chose its trials (Optuna's included).
    objective.log_best(tracker, parent, context.objective, reused, children)
    del children  # the report reads the runs its own way; a thousand need not be held twice
    # Imported here, not at the top: keeps matplotlib out of every CLI start.
    from rnnsweep.report import write_report_safely

    write_report_safely(tracker, parent)  # never raises: a failed report is a warning
    reused_note = f" ({summary['trials_reused']} reused)" if reused else ""
    print(f"rnnsweep: {summary['trials_finished'] + summary['trials_reused']}/"
          f"{summary['trials']} trials finished{reused_note}, {summary['trials_failed']} failed, "
          f"{summary['trials_unsupported']} unsupported, "
          f"{summary['trials_diverged']} diverged in {summary['sweep_wall_s']:.1f} s "
          f"(parent run {parent})", flush=True)
    return summary

