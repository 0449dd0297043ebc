"""A sweep's report, rebuilt from its MLflow records alone.

The report is a Markdown table with one row per trial (the swept axes, the key metrics
with ±IQR, the noise verdict, the outcome), findings (speedups, fitted slopes with their
R² and standard error, deployment parity), notes (noisy timings, trials that did not run,
reused trials) and PNG plots chosen for the axes the sweep varied. ``write_report`` logs it
onto the sweep's parent run as ``report.md``, ``report.html`` and ``plots/*.png``.

The package's modules, one concern each, each importing only those before it: ``model``
(the data), ``reading`` (MLflow), ``axes`` (what the sweep varied), ``plots`` (PNGs),
``sections`` (findings and plots), ``render`` (text and HTML), ``tidy`` (one row per trial
for CSV/Parquet), ``build`` (this: the report assembled and logged) and ``cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rnnsweep.contract import SWEEP_NAME_TAG
from rnnsweep.report import axes as axes_
from rnnsweep.report import render, sections
from rnnsweep.report.axes import sweep_axes
from rnnsweep.report.model import Finding, Report, Trial
from rnnsweep.report.reading import ReportError, sweep_trials
from rnnsweep.text import one_line
from rnnsweep.tracking import Tracker

__all__ = ["Finding", "Report", "ReportError", "Trial", "artifacts", "build_report",
           "sweep_axes", "write_report", "write_report_safely"]


def build_report(tracker: Tracker, parent_run_id: str, trials: list[Trial] | None = None,
                 check: Callable[[], None] = lambda: None) -> Report:
    """``trials``: the sweep's, where the caller has read them already (``sweep_trials``).
    ``check`` is called between sections: a closing sweep's signal raises there."""
    parent = tracker.client.get_run(parent_run_id)
    if parent.info.experiment_id != tracker.experiment_id:
        raise ReportError(f"run {parent_run_id} belongs to experiment "
                          f"{parent.info.experiment_id}, not to the tracker's "
                          f"{tracker.experiment_id}")
    if trials is None:
        trials = sweep_trials(tracker, parent)
    if not trials:
        raise ReportError(f"run {parent_run_id} has no child runs: is it a sweep's parent run?")
    axes = sweep_axes(trials)
    trials.sort(key=lambda t: axes_.values(t, axes))
    sweep = parent.data.tags.get(SWEEP_NAME_TAG) or parent.info.run_name or "sweep"
    devices = sorted({t.device for t in trials if t.device})
    report = Report(parent_run_id, sweep, "; ".join(devices) or "unknown device", axes, trials,
                    *render.table(trials, axes), experiment_id=parent.info.experiment_id)
    for section in sections.sections(tracker.client, report):
        check()
        section(report)
    check()
    if not report.plots:
        sections.fallback_section(report)
    sections.notes_section(report)
    report.markdown, report.html = render.markdown(report), render.html(report)
    return report


def artifacts(report: Report) -> dict[str, bytes]:
    """The report's files by their path on the parent run (and under ``--out``)."""
    return {"report.md": report.markdown.encode(), "report.html": report.html.encode(),
            **report.plots}


def write_report(tracker: Tracker, parent_run_id: str, trials: list[Trial] | None = None,
                 check: Callable[[], None] = lambda: None) -> Report:
    """Builds the report and logs it onto the parent run; raises on any problem."""
    report = build_report(tracker, parent_run_id, trials, check)
    check()
    tracker.log_artifacts(parent_run_id, artifacts(report))
    return report


def write_report_safely(tracker: Tracker, parent_run_id: str,
                        trials: list[Trial] | None = None,
                        check: Callable[[], None] = lambda: None) -> Report | None:
    """For the end of a sweep: a report that cannot be built is a warning, never a failed
    sweep (the trials are recorded; ``python -m rnnsweep.report`` can rebuild it later).
    What ``check`` raises (a signal) is not caught."""
    try:
        report = write_report(tracker, parent_run_id, trials, check)
    except Exception as exc:  # noqa: BLE001 - any failure here is a warning by design
        print(f"rnnsweep: warning: no report for parent run {parent_run_id}: "
              f"{type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return None
    # The sweep's last words to the user (the CLI's terminal), so printed, not logged.
    noisy = [t for t in report.trials if t.noisy]
    if noisy:
        print(f"rnnsweep: warning: {len(noisy)} of {sum(t.timed for t in report.trials)} timed "
              "trials have noisy timings (the report's notes say why)", file=sys.stderr)
    print(f"rnnsweep: report ({len(report.plots)} plots) logged on parent run {parent_run_id}")
    return report
