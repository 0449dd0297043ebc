"""A plain terminal sink: one line per finished trial and a progress line.

Stands in until the console's own sink (``rnnsweep.sweep.console``) is wired in.
"""

from __future__ import annotations

from collections.abc import Sequence

from rnnsweep.record import FAILED, TrialRecord
from rnnsweep.sweep.job import summary_line
from rnnsweep.sweep.sink import TrialInfo


class LineSink:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.counts = {"done": 0, "running": 0, "failed": 0, "skipped": 0}
        self.total = 0

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        self.names.update({t.idx: t.name for t in trials})
        self.total += len(trials)
        print(f"rnnsweep: launching {len(trials)} trials", flush=True)

    def started(self, idx: int) -> None:
        self.counts["running"] += 1

    def reused(self, idx: int, run_id: str) -> None:
        self.total += 1
        self.counts["skipped"] += 1
        print(f"  #{idx} [skipped] identical config finished as run {run_id}", flush=True)

    def finished(self, idx: int, record: TrialRecord) -> None:
        self.counts["running"] = max(0, self.counts["running"] - 1)
        self.counts["failed" if record.outcome == FAILED else "done"] += 1
        print(f"  #{idx} {summary_line(self.names.get(idx, str(idx)), record)}", flush=True)
        self._progress()

    def cancelled(self, idx: int, reason: str) -> None:
        self.counts["running"] = max(0, self.counts["running"] - 1)

    def _progress(self) -> None:
        c = self.counts
        pending = self.total - sum(c.values())
        print(f"rnnsweep: {c['done']}/{self.total} done, {c['running']} running, "
              f"{max(pending, 0)} pending, {c['failed']} failed, {c['skipped']} skipped",
              flush=True)
