"""A sweep's report, rebuilt from its MLflow records alone (``python -m rnnsweep.report``)."""

from rnnsweep.report.build import (
    Report,
    ReportError,
    build_report,
    sweep_axes,
    write_report,
    write_report_safely,
)

__all__ = ["Report", "ReportError", "build_report", "sweep_axes", "write_report",
           "write_report_safely"]
