"""``python -m rnnsweep.report``: rebuild a sweep's report, print it, log it, export it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from rnnsweep import journal, lease, privacy
from rnnsweep.report import tidy
from rnnsweep.report.build import artifacts, build_report
from rnnsweep.report.model import Report
from rnnsweep.report.reading import ReportError, locate
from rnnsweep.text import one_line


def main(argv: list[str] | None = None) -> int:
    privacy.telemetry_off()
    args = _parser().parse_args(argv)
    try:
        if args.out is not None:
            check_out_dir(args.out)
        tracker, parent = locate(args.tracking_uri, args.run_id, args.experiment)
        if not args.no_log:
            # Records a sweep run here could not write to this store then (see journal).
            for line in journal.replay(tracker):
                print(line)
        # A sweep whose driver died is closed first, as the sweep commands close it: its
        # report then shows its trials KILLED ("driver lost"), never RUNNING.
        reaped = lease.reap_lost_sweeps(tracker)
        if reaped:
            print(f"closed {len(reaped)} sweep(s) whose driver was lost: {', '.join(reaped)}")
        report = build_report(tracker, parent)
    except (ReportError, MlflowException) as exc:
        print(f"rnnsweep.report: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    print(report.markdown, end="")
    if args.out:
        written = save(report, args.out)
        print(f"wrote {len(written)} files under {args.out}")
    if args.csv:
        count = tidy.write(report.trials, args.csv)  # sorted along the sweep's axes
        print(f"wrote {count} rows to {args.csv}")
    if not args.no_log:
        tracker.log_artifacts(parent, artifacts(report))
        print(f"logged {', '.join(artifacts(report))} on parent run {parent}")
    return 0


def save(report: Report, out_dir: Path) -> list[Path]:
    written = []
    for rel, content in artifacts(report).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def check_out_dir(out: Path) -> None:
    """``--out`` is a directory the report's files go into: an existing file there is the
    user's, and is neither replaced nor a reason for a traceback after the work is done."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ReportError(f"--out={out}: {existing} is a file, not a directory")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rnnsweep.report",
        description="Rebuild a sweep's report from MLflow: print its table and log report.md, "
                    "report.html and plots/*.png onto the sweep's parent run.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the sweep's parent run")
    which.add_argument("--experiment", help="report the latest sweep of this experiment")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="MLflow store or server (default: %(default)s, relative to the "
                             "current directory)")
    parser.add_argument("--no-log", action="store_true",
                        help="only print; log nothing onto the parent run")
    parser.add_argument("--out", type=Path, help="also write the report's files into OUT")
    parser.add_argument("--csv", type=Path, metavar="PATH",
                        help="also write one row per trial (typed params, summary metrics) to "
                             "PATH: CSV, or Parquet when PATH ends in .parquet")
    return parser
