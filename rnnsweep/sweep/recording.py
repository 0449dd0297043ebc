"""The MLflow sink: one child run per trial under the sweep's parent run.

A trial's run is made when the trial starts on a worker (its start time the worker's),
so MLflow's Duration is the trial's and a queued trial is not shown as running; its
per-step values are written while it runs and its record when it finishes, through
``log_batch``, each by a writer thread (``lanes``), never by the driver's own. The sink
keeps the ids of runs not yet closed, so the sweep context can close them KILLED or
FAILED when the sweep ends abnormally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException

from rnnsweep import contract
from rnnsweep.contract import (
    KILLED,
    LIVE_DROPPED_TAG,
    RAY_TAG_PREFIX,
    RETRIES_TAG,
    REUSED_TAG_PREFIX,
    SWEEP_TAG,
    to_tag,
)
from rnnsweep.journal import Journal, StoreDown, record_entry
from rnnsweep.record import TrialRecord
from rnnsweep.sweep.lanes import Lanes, Write
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.text import first_line
from rnnsweep.tracking import Tracker
from rnnsweep.trial.live import Row

log = logging.getLogger(__name__)

# How long the sweep's end waits for the writes still queued: beyond it the store is too
# slow, and the runs not written are closed as the context decides.
DRAIN_WAIT_S = 60.0
# Writer threads against a server or a database server: each write is a round trip, and
# the server takes several at once. A SQLite file takes one writer at a time.
SERVER_WRITERS = 4
# Runs and records queued per writer before the driver waits for the store: a few seconds
# of writing, kept off the trials' path, without a backlog that outgrows the sweep's end.
RECORDS_QUEUED = 32


@dataclass
class _Live:
    """What a running trial's run has of its series: the last step queued per metric,
    and the steps dropped on the way (queue full, store unreachable), per metric as
    ranges. Its final record fills in exactly the rest."""

    last: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    dropped_points: int = 0

    def logged(self, name: str, step: int) -> bool:
        if step > self.last.get(name, -1):
            return False
        return not any(lo <= step <= hi for lo, hi in self.dropped.get(name, ()))


def _drop(state: _Live, rows: list[Row]) -> None:
    if not rows:
        return
    lo, hi = rows[0][0], rows[-1][0]
    for name in {name for _, values in rows for name in values}:
        state.dropped.setdefault(name, []).append((lo, hi))
    state.dropped_points += sum(len(values) for _, values in rows)


class RecordingSink:
    """Every event is queued on its trial's lane (``Lanes``) and written by a writer
    thread: the driver never waits on the store while trials run. ``runs`` and ``open``
    are the writers' (a run is in them once made); ``flush`` waits for what is queued."""

    def __init__(self, tracker: Tracker, parent: str | None, live_queue: int = 100_000,
                 journal: Journal | None = None) -> None:
        self.tracker, self.parent, self.journal = tracker, parent, journal
        self.runs: dict[int, str] = {}
        self.open: set[str] = set()
        self.waiting: dict[int, TrialInfo] = {}  # submitted, not started: no run yet
        self.live_state: dict[int, _Live] = {}
        self._started: set[int] = set()
        # How each trial's run is made (name, tags, start), till its end is written.
        self._made: dict[int, tuple[str, dict[str, str], float | None]] = {}
        self._ended: set[int] = set()
        self._params: set[int] = set()  # trials whose params are on their run already
        self._params_of: dict[int, dict[str, str]] = {}
        self.timed_out = False  # writes were still running when the sweep ended
        local = tracker.uri.startswith("sqlite:")
        writers = 1 if local else SERVER_WRITERS
        self.lanes = Lanes(writers, live_queue, backlog=RECORDS_QUEUED * writers, inline=local)

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        for trial in trials:
            self.waiting[trial.idx] = trial

    def started(self, idx: int, info: dict | None = None) -> None:
        if idx in self._ended:  # a start heard after its end (a lost worker's last word)
            return
        info = info or {}
        attempt = int(info.get("attempt", 0))
        if idx in self._started:  # a retry of a trial whose worker died
            self._write(idx, lambda: self.tracker.log(self.runs[idx],
                                                      tags={RETRIES_TAG: to_tag(attempt)}))
            return
        self._started.add(idx)
        # Where it runs, from its start (the record adds the rest): a person or a test
        # can find the trial's process while it runs.
        where = {f"{RAY_TAG_PREFIX}{key}": str(info[key]) for key in ("host", "pid", "node_id")
                 if key in info}
        self._plan(idx, info.get("started"), {RETRIES_TAG: to_tag(attempt), **where})
        self._write(idx, lambda: self._create(idx))

    def live(self, idx: int, rows: list[Row], total_steps: int | None = None) -> None:
        if idx not in self._started or idx in self._ended:
            return
        state = self.live_state.setdefault(idx, _Live())
        # A retried or resumed trial sends again the steps its run has: one history.
        fresh = []
        for step, values in rows:
            new = {k: v for k, v in values.items() if step > state.last.get(k, -1)}
            if new:
                fresh.append((step, new))
                for name in new:
                    state.last[name] = step
        if fresh:
            size = sum(len(values) for _, values in fresh)
            self.lanes.submit(idx, Write(self._guarded(lambda: self._log_steps(idx, fresh)),
                                         failed=lambda _: _drop(state, fresh), size=size))

    def checkpoint(self, idx: int, data: bytes) -> None:
        """A running trial's latest save (checkpoint.store=artifacts), onto its run: never
        dropped for room, since it holds no values; a newer one replaces it on the run."""
        if idx in self._started and idx not in self._ended:
            self._write(idx, lambda: self.tracker.log_artifacts(
                self.runs[idx], {contract.CHECKPOINT_ARTIFACT: data}),
                lambda exc: log.warning("a checkpoint of trial %s was not written: %s", idx,
                                        first_line(str(exc)) if exc else "dropped"))

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        if self.parent:
            parent = self.parent

            def tag() -> None:
                name = self.tracker.client.get_run(run_id).info.run_name or str(idx)
                self.tracker.client.set_tag(parent, f"{REUSED_TAG_PREFIX}{run_id}", name)

            self._write(idx, tag)

    def finished(self, idx: int, record: TrialRecord) -> None:
        if self.parent:
            record.tags[SWEEP_TAG] = self.parent
        self._ended.add(idx)
        state = self.live_state.pop(idx, None)
        if idx not in self._started:
            self._plan(idx, record.started_at)
        if not record.params:  # a record the driver made for a trial that died
            record.params = dict(self._params_of.get(idx) or {})

        def write(run_id: str) -> None:
            if state is not None and state.dropped_points:
                record.tags[LIVE_DROPPED_TAG] = (
                    f"{state.dropped_points} live values could not be written while the "
                    "trial ran (store slow or unreachable); its final record wrote them")
            # The live values queued before it on this lane are written (or dropped) by now.
            self.tracker.write_record(run_id, record, with_params=idx not in self._params,
                                      logged=None if state is None else state.logged)

        self._kept(idx, {"kind": "record", "record": record_entry(record)}, write)

    def cancelled(self, idx: int, reason: str, outcome: str = KILLED) -> None:
        self._ended.add(idx)
        self.live_state.pop(idx, None)
        if idx not in self._started:  # it never started: its run says it was killed queued
            self._plan(idx, None)
        params = {} if idx in self._params else dict(self._params_of.get(idx) or {})

        def write(run_id: str) -> None:
            if params and idx not in self._params:  # none of its live values got there
                self.tracker.log(run_id, params=params)
            self.tracker.fail_run(run_id, reason, status="KILLED", outcome=outcome)

        self._kept(idx, {"kind": "fail", "reason": reason, "status": "KILLED",
                         "outcome": outcome, "params": params}, write)

    def _kept(self, idx: int, entry: dict, write: Callable[[str], object]) -> None:
        """Queues a trial's end for its run, entered in the journal first (now, on the
        driver's thread): what the store does not take, or what is still queued when the
        sweep ends, stays there for the next command. The run is made now if its making
        failed; a journaled run is no longer this sweep's to close."""
        name, tags, started = self._made[idx]
        number = None if self.journal is None else self.journal.add(
            {**entry, "trial": idx, "name": name, "tags": tags, "started": started})

        def run() -> None:
            run_id = self.runs.get(idx)
            try:
                # Before the back-off: a store whose file went away is said to be lost
                # (the journal then writes the whole sweep again), never merely down.
                self.tracker.check_intact()
                if self.journal is not None:
                    self.journal.check_up()
                if run_id is None:
                    run_id = self._create(idx)
                write(run_id)
            except Exception as exc:
                if self.journal is None:
                    raise
                self.journal.failed(exc)
                log.info("trial %s: its record stays in the journal: %s", idx, exc)
            else:
                if number is not None and self.journal is not None:
                    self.journal.done(number)
            self.open.discard(run_id)
            self._made.pop(idx, None)  # held per trial only while its run may be made
            self._params_of.pop(idx, None)

        self._write(idx, run, guarded=False)

    def flush(self, timeout: float | None = DRAIN_WAIT_S) -> bool:
        """Waits for every queued write (before reading back what the trials recorded)."""
        return self.lanes.drain(timeout=timeout)

    def ended(self) -> None:
        self.timed_out = not self.lanes.close(timeout=DRAIN_WAIT_S)
        if self.timed_out:
            log.warning("the store took over %.0f s to write the sweep's last records",
                        DRAIN_WAIT_S)

    def close_open_runs(self, reason: str, status: str) -> int:
        """Closes every run that never got its record; returns how many. A run whose end
        waits in the journal is left to it (the next command writes its record)."""
        closed = 0
        kept = set() if self.journal is None else {
            self.runs.get(trial) for trial in self.journal.pending_trials()}
        for run_id in sorted(self.open - kept):
            try:
                if self.journal is not None:
                    self.journal.check_up()
                self.tracker.fail_run(run_id, reason, status=status)
                closed += 1
            except StoreDown as exc:
                log.warning("%d runs left open: %s", len(self.open - kept) - closed, exc)
                break  # the next command's reaper closes them
            except Exception as exc:  # noqa: BLE001 - the next command's reaper retries
                log.warning("could not close run %s: %s", run_id, exc)
        self.open.clear()
        return closed

    def _trial(self, idx: int) -> TrialInfo:
        return self.waiting.pop(idx, None) or TrialInfo(idx, f"trial {idx}")

    def _write(self, idx: int, run: Callable[[], object],
               failed: Callable[[BaseException | None], object] | None = None,
               guarded: bool = True) -> None:
        def warn(exc: BaseException | None) -> None:
            if self.journal is not None and isinstance(exc, (MlflowException, OSError)):
                # The journal said it once for the sweep; the record waits there.
                log.info("trial %s: a store write failed: %s", idx, exc)
            else:
                log.warning("trial %s: a store write failed: %s", idx,
                            first_line(str(exc)) if exc else "dropped")

        self.lanes.submit(idx, Write(self._guarded(run) if guarded else run,
                                     failed=failed or warn))

    def _guarded(self, write: Callable[[], object]) -> Callable[[], object]:
        """``write``, left untried while the store is left alone after a failure, and
        telling the journal how the store answered (see ``rnnsweep.journal``)."""
        journal = self.journal
        if journal is None:
            return write

        def run() -> object:
            try:
                self.tracker.check_intact()  # see _kept: lost, not merely down
                journal.check_up()
                result = write()
            except (MlflowException, OSError) as exc:
                journal.failed(exc)
                raise
            journal.up()
            return result

        return run

    def _plan(self, idx: int, started: float | None, tags: dict[str, str] | None = None
              ) -> None:
        """What the trial's run is made with (on the driver's thread: it owns ``waiting``)."""
        trial = self._trial(idx)
        all_tags = {**trial.tags, **(tags or {})}
        if self.parent:
            all_tags[SWEEP_TAG] = self.parent
        self._made[idx] = (trial.name, all_tags, started)
        self._params_of[idx] = trial.params

    def _create(self, idx: int) -> str:
        name, tags, started = self._made[idx]
        run_id = self.tracker.start_run(name, tags=tags, parent_run_id=self.parent,
                                        start_time=started)
        self.runs[idx] = run_id
        if self.journal is not None:  # its record, if journaled, goes onto this run
            self.journal.note({"kind": "run", "trial": idx, "run_id": run_id})
        self.open.add(run_id)
        return run_id

    def _log_steps(self, idx: int, rows: list[Row]) -> None:
        # A trial's params travel with its first live values, or else with its record:
        # a request fewer per trial than logging them when its run is made (over HTTP,
        # each is a round trip), and a long trial still shows them within one interval.
        params = self._params_of.pop(idx, None)
        try:
            self.tracker.log_steps(self.runs[idx], rows, params=params)
        except Exception:
            if params is not None:
                self._params_of[idx] = params  # the record logs them instead
            raise
        if params:
            self._params.add(idx)
