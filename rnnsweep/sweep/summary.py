"""The end of a sweep: summary metrics on the parent run, the report, the exit status."""

from __future__ import annotations

from rnnsweep.record import DIVERGED
from rnnsweep.tracking import Tracker

# How many trials of the last sweep in this process failed; the CLI's exit status.
last_failed = 0


def finish_sweep(tracker: Tracker, parent: str, wall_s: float) -> dict[str, float]:
    global last_failed
    children = tracker.children(parent)
    statuses = [run.info.status for run in children]
    throughputs = [run.data.metrics["throughput_seq_per_s"] for run in children
                   if "throughput_seq_per_s" in run.data.metrics]
    summary = {
        "trials": len(children),
        "trials_finished": statuses.count("FINISHED"),
        "trials_failed": statuses.count("FAILED"),
        "trials_killed": statuses.count("KILLED"),
        "trials_unsupported": sum(run.data.tags.get("rnnsweep.outcome") == "UNSUPPORTED"
                                  for run in children),
        "trials_diverged": sum(run.data.tags.get("rnnsweep.outcome") == DIVERGED
                               for run in children),
        "sweep_wall_s": wall_s,
    }
    if throughputs:
        summary["best_throughput_seq_per_s"] = max(throughputs)
    tracker.log_summary(parent, summary)
    # Imported here, not at the top: keeps matplotlib out of every CLI start.
    from rnnsweep.report import write_report_safely

    write_report_safely(tracker, parent)  # never raises: a failed report is a warning
    last_failed = summary["trials_failed"] + summary["trials_killed"]
    tracker.client.set_terminated(parent, "FAILED" if last_failed else "FINISHED")
    print(f"rnnsweep: {summary['trials_finished']}/{summary['trials']} trials finished, "
          f"{summary['trials_failed']} failed, {summary['trials_unsupported']} unsupported, "
          f"{summary['trials_diverged']} diverged "
          f"in {wall_s:.1f} s (parent run {parent})")
    return summary
