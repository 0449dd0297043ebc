"""The MLflow sink: one child run per trial under the sweep's parent run.

A trial's run is made when the trial starts on a worker (its start time the worker's),
so MLflow's Duration is the trial's and a queued trial is not shown as running; its
per-step values are written while it runs (``LiveWriter``) and its record when it
finishes, through ``log_batch``. The sink keeps the ids of runs not yet closed, so the
sweep context can close them KILLED or FAILED when the sweep ends abnormally.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
from rnnsweep.record import TrialRecord
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.tracking import Tracker
from rnnsweep.trial.live import Row

log = logging.getLogger(__name__)

# How long a finishing trial's record waits for its live values still queued: beyond it
# the store is too slow, and the record fills in what is missing itself.
DRAIN_WAIT_S = 30.0


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


class LiveWriter:
    """Writes running trials' values (and relayed checkpoints) on a thread of its own, so
    a slow store never holds up the driver (and through it the trials). The queue is
    bounded (``capacity`` values): when it is full the oldest batch of values is dropped,
    and counted on its run."""

    def __init__(self, tracker: Tracker, capacity: int) -> None:
        self.tracker, self.capacity = tracker, capacity
        # (run id, values it holds, write, what to do when it cannot be written)
        self._queue: collections.deque[tuple[str, int, Callable[[], None],
                                             Callable[[], None]]] = collections.deque()
        self._values = 0
        self._pending: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rnnsweep-live", daemon=True)
        self._thread.start()

    def put(self, run_id: str, rows: list[Row], state: _Live) -> None:
        size = sum(len(values) for _, values in rows)
        self._put(run_id, size, lambda: self.tracker.log_steps(run_id, rows),
                  lambda: _drop(state, rows))

    def put_files(self, run_id: str, files: dict[str, bytes]) -> None:
        """Artifacts for a running trial's run (its latest checkpoint): never dropped
        for room, since they hold no values; a newer one replaces it on the run."""
        self._put(run_id, 0, lambda: self.tracker.log_artifacts(run_id, files),
                  lambda: log.warning("a checkpoint of run %s was not written", run_id))

    def _put(self, run_id: str, size: int, write: Callable[[], None],
             dropped: Callable[[], None]) -> None:
        with self._cond:
            while size and self._queue and self._values + size > self.capacity:
                oldest = next((item for item in self._queue if item[1]), None)
                if oldest is None:
                    break
                self._queue.remove(oldest)
                self._forget(oldest[0], oldest[1])
                oldest[3]()
            self._queue.append((run_id, size, write, dropped))
            self._values += size
            self._pending[run_id] += 1
            self._cond.notify_all()

    def drain(self, run_id: str, timeout: float = DRAIN_WAIT_S) -> None:
        """Waits until nothing of ``run_id`` is queued or being written (or ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending[run_id], timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=DRAIN_WAIT_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                run_id, size, write, dropped = self._queue.popleft()
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - the final record fills values in
                log.debug("live values of run %s not written: %s", run_id, exc)
                dropped()
            with self._cond:
                self._forget(run_id, size)

    def _forget(self, run_id: str, size: int) -> None:
        self._values -= size
        self._pending[run_id] -= 1
        if not self._pending[run_id]:
            del self._pending[run_id]
        self._cond.notify_all()


def _drop(state: _Live, rows: list[Row]) -> None:
    if not rows:
        return
    lo, hi = rows[0][0], rows[-1][0]
    for name in {name for _, values in rows for name in values}:
        state.dropped.setdefault(name, []).append((lo, hi))
    state.dropped_points += sum(len(values) for _, values in rows)


class RecordingSink:
    def __init__(self, tracker: Tracker, parent: str | None, live_queue: int = 100_000) -> None:
        self.tracker, self.parent = tracker, parent
        self.runs: dict[int, str] = {}
        self.open: set[str] = set()
        self.waiting: dict[int, TrialInfo] = {}  # submitted, not started: no run yet
        self.live_state: dict[int, _Live] = {}
        self.params_logged: set[int] = set()
        self.writer = LiveWriter(tracker, live_queue)

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        for trial in trials:
            self.waiting[trial.idx] = trial

    def started(self, idx: int, info: dict | None = None) -> None:
        info = info or {}
        attempt = int(info.get("attempt", 0))
        run_id = self.runs.get(idx)
        if run_id is not None:  # a retry of a trial whose worker died
            self.tracker.log(run_id, tags={RETRIES_TAG: to_tag(attempt)})
            return
        # Where it runs, from its start (the record adds the rest): a person or a test
        # can find the trial's process while it runs.
        where = {f"{RAY_TAG_PREFIX}{key}": str(info[key]) for key in ("host", "pid", "node_id")
                 if key in info}
        self._create(idx, info.get("started"), {RETRIES_TAG: to_tag(attempt), **where})

    def live(self, idx: int, rows: list[Row], total_steps: int | None = None) -> None:
        run_id = self.runs.get(idx)
        if run_id is None or run_id not in self.open:
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
            self.writer.put(run_id, fresh, state)

    def checkpoint(self, idx: int, data: bytes) -> None:
        """A running trial's latest save (checkpoint.store=artifacts), onto its run."""
        run_id = self.runs.get(idx)
        if run_id is not None and run_id in self.open:
            self.writer.put_files(run_id, {contract.CHECKPOINT_ARTIFACT: data})

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        if self.parent:
            name = self.tracker.client.get_run(run_id).info.run_name or str(idx)
            self.tracker.client.set_tag(self.parent, f"{REUSED_TAG_PREFIX}{run_id}", name)

    def finished(self, idx: int, record: TrialRecord) -> None:
        run_id = self.runs.get(idx) or self._create(idx, record.started_at)
        if self.parent:
            record.tags[SWEEP_TAG] = self.parent
        state = self.live_state.pop(idx, None)
        logged = None
        if state is not None:
            self.writer.drain(run_id)
            logged = state.logged
            if state.dropped_points:
                record.tags[LIVE_DROPPED_TAG] = (
                    f"{state.dropped_points} live values could not be written while the "
                    "trial ran (store slow or unreachable); its final record wrote them")
        self.tracker.write_record(run_id, record, with_params=idx not in self.params_logged,
                                  logged=logged)
        self.open.discard(run_id)

    def cancelled(self, idx: int, reason: str, outcome: str = KILLED) -> None:
        run_id = self.runs.get(idx)
        if run_id is None:  # it never started: its run says it was killed in the queue
            run_id = self._create(idx, None)
        if run_id in self.open:
            self.live_state.pop(idx, None)
            self.writer.drain(run_id, timeout=5.0)
            self.tracker.fail_run(run_id, reason, status="KILLED", outcome=outcome)
            self.open.discard(run_id)

    def ended(self) -> None:
        self.writer.close()

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

    def _create(self, idx: int, started: float | None, tags: dict[str, str] | None = None
                ) -> str:
        trial = self.waiting.pop(idx, None) or TrialInfo(idx, f"trial {idx}")
        all_tags = {**trial.tags, **(tags or {})}
        if self.parent:
            all_tags[SWEEP_TAG] = self.parent
        run_id = self.tracker.start_run(trial.name, tags=all_tags, parent_run_id=self.parent,
                                        start_time=started)
        self.runs[idx] = run_id
        self.open.add(run_id)
        if trial.params:
            self.tracker.log(run_id, params=trial.params)
            self.params_logged.add(idx)
        return run_id
