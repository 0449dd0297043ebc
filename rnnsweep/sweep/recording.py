"""The MLflow sink: one child run per trial under the sweep's parent run.

Runs are created when trials are submitted, with their params, so a trial whose worker
dies still shows what it was; its record is written when it finishes, through
``log_batch``. The sink keeps the ids of runs not yet closed, so the sweep context can
close them KILLED or FAILED when the sweep ends abnormally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rnnsweep.record import TrialRecord
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.tracking import REUSED_TAG_PREFIX, SWEEP_TAG, Tracker

log = logging.getLogger(__name__)


class RecordingSink:
    def __init__(self, tracker: Tracker, parent: str | None) -> None:
        self.tracker, self.parent = tracker, parent
        self.runs: dict[int, str] = {}
        self.open: set[str] = set()
        self.params_logged: set[int] = set()

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        for trial in trials:
            tags = dict(trial.tags)
            if self.parent:
                tags[SWEEP_TAG] = self.parent
            run_id = self.tracker.start_run(trial.name, tags=tags, parent_run_id=self.parent)
            self.runs[trial.idx] = run_id
            self.open.add(run_id)
            if trial.params:
                self.tracker.log(run_id, params=trial.params)
                self.params_logged.add(trial.idx)

    def started(self, idx: int) -> None:
        pass

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        if self.parent:
            name = self.tracker.client.get_run(run_id).info.run_name or str(idx)
            self.tracker.client.set_tag(self.parent, f"{REUSED_TAG_PREFIX}{run_id}", name)

    def finished(self, idx: int, record: TrialRecord) -> None:
        run_id = self.runs.get(idx)
        if run_id is None:
            return
        if self.parent:
            record.tags[SWEEP_TAG] = self.parent
        self.tracker.write_record(run_id, record, with_params=idx not in self.params_logged)
        self.open.discard(run_id)

    def cancelled(self, idx: int, reason: str) -> None:
        run_id = self.runs.get(idx)
        if run_id in self.open:
            self.tracker.fail_run(run_id, reason, status="KILLED")
            self.open.discard(run_id)

    def close_open_runs(self, reason: str, status: str) -> int:
        """Closes every run that never got its record; returns how many."""
        closed = 0
        for run_id in sorted(self.open):
            try:
                self.tracker.fail_run(run_id, reason, status=status)
                closed += 1
            except Exception as exc:  # noqa: BLE001 - the next command's reaper retries
                log.warning("could not close run %s: %s", run_id, exc)
        self.open.clear()
        return closed
