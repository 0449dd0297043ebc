"""One sweep's lifecycle, from the command line to its parent run's final status.

The CLI creates a :class:`SweepContext` and hands it to Hydra inside the task function
(:class:`~rnnsweep.sweep.job.SweepTask`), where the launcher finds it; Hydra's launcher
API, used without the CLI, gets one the launcher makes for itself. The context holds
everything a sweep's parts share: the tracker and the parent run (with its lease), the
sinks that record and show trials, whether this process owns the Ray it runs on, and the
counts that decide the exit status. However the sweep ends (done, a raising sweeper, a
signal), closing the context leaves the parent FINISHED, FAILED or KILLED, never RUNNING.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from rnnsweep import lease
from rnnsweep.contract import (
    FAILED,
    FINGERPRINT_TAG,
    KILLED,
    OVERRIDES_TAG,
    ROLE_TAG,
    SWEEP_NAME_TAG,
    SWEEP_ROLE,
    TIMED_OUT,
)
from rnnsweep.record import TrialRecord
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.console import ConsoleSink
from rnnsweep.sweep.interrupts import Interrupted
from rnnsweep.sweep.sink import SweepSink, TrialInfo
from rnnsweep.sweep.summary import finish_sweep

if TYPE_CHECKING:
    from rnnsweep.journal import Journal
    from rnnsweep.sweep.recording import RecordingSink
    from rnnsweep.tracking import Tracker

log = logging.getLogger(__name__)


_OPTIONAL = ("live", "checkpoint", "ended")  # events only the sinks that have them hear


class Sinks:
    """Every sink hears every event; a sink that raises is logged and never stops the
    launcher or the other sinks."""

    def __init__(self, sinks: Sequence[SweepSink] = ()) -> None:
        self.sinks = list(sinks)

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        self._each("submitted", trials)

    def started(self, idx: int, info: dict | None = None) -> None:
        self._each("started", idx, info)

    def live(self, idx: int, rows: list, total_steps: int | None) -> None:
        self._each("live", idx, rows, total_steps)

    def checkpoint(self, idx: int, data: bytes) -> None:
        self._each("checkpoint", idx, data)

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        self._each("reused", idx, run_id, info)

    def finished(self, idx: int, record: TrialRecord) -> None:
        self._each("finished", idx, record)

    def cancelled(self, idx: int, reason: str, outcome: str = KILLED) -> None:
        self._each("cancelled", idx, reason, outcome)

    def ended(self) -> None:
        self._each("ended")  # optional: only sinks that show something at the end have it

    def _each(self, event: str, *args: Any) -> None:
        for sink in self.sinks:
            if event in _OPTIONAL and not hasattr(sink, event):
                continue
            try:
                with interrupts.held():  # a signal waits for the sink's write to end
                    getattr(sink, event)(*args)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                log.warning("%s.%s failed: %s", type(sink).__name__, event, exc)


class SweepContext:
    def __init__(self, tracking: DictConfig | None, *, multirun: bool, name: str = "sweep",
                 tags: dict[str, str] | None = None, params: dict[str, str] | None = None,
                 objective: DictConfig | None = None) -> None:
        self.tracking, self.multirun, self.name = tracking, multirun, name
        # What the sweep's best trial is judged by (objective.metric and direction, and the
        # workload that picks the default metric); None: the default of the default.
        self.objective = objective
        self._parent_tags, self._parent_params = tags or {}, params or {}
        self.tracker: Tracker | None = None
        self.parent: str | None = None
        self.recording: RecordingSink | None = None
        self.journal: Journal | None = None
        self.kept_records = False  # some records are in the journal, not the store
        self.terminal: SweepSink | None = None
        self.sinks = Sinks([self])
        self.n_submitted = self.n_finished = self.n_failed = self.n_killed = 0
        # The sweep's own time limit (sweep_timeout_s), once reached: the trials it cut
        # short are KILLED with that reason, and are no failure of the sweep's.
        self.limit_reason = ""
        self.n_cut = 0
        self.reused_runs: dict[int, str] = {}
        self.summary: dict[str, float] = {}
        self.started_at = time.time()
        self._opened = self._closed = False
        self._heartbeat: lease.Heartbeat | None = None
        self._owns_ray = False
        self._watchdog: subprocess.Popen | None = None
        self._local_idx = itertools.count()

    # --- creating ------------------------------------------------------------------------

    @classmethod
    def for_sweep(cls, config: DictConfig, overrides: Sequence[str] | None = None,
                  multirun: bool = True) -> SweepContext:
        """From a sweep's config (its ``hydra`` node included); ``overrides`` are the
        command line's, or Hydra's own record of them."""
        if overrides is None:
            overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        overrides = [str(o) for o in overrides]
        ready = next((o.split("=", 1)[1] for o in overrides if o.startswith("+sweep=")), "")
        found = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        # A DictConfig's container is a dict (OmegaConf types it as any container).
        params = cast(dict[str, Any], OmegaConf.to_container(found)) \
            if isinstance(found, DictConfig) and found else {}
        # A ready sweep is named after its file; an ad-hoc one after its overrides.
        name = ready or " ".join(overrides) or "sweep"
        tags = {ROLE_TAG: SWEEP_ROLE, SWEEP_NAME_TAG: ready,
                OVERRIDES_TAG: " ".join(overrides)[:4000]}
        judged_by = OmegaConf.masked_copy(config, [k for k in ("objective", "workload")
                                                   if k in config])
        return cls(OmegaConf.select(config, "tracking"), multirun=multirun, name=name,
                   tags=tags, params={f"sweep.{k}": str(v) for k, v in params.items()},
                   objective=judged_by)

    def open(self) -> None:
        """Opens the store, closes sweeps whose driver died, and starts the parent run."""
        if self._opened:
            return
        self._opened = True
        self.started_at = time.time()
        self.terminal = _terminal()
        if self.tracking is None:  # not an rnnsweep config: jobs are run, not recorded
            self.sinks.sinks.append(self.terminal)
            return
        from rnnsweep import journal
        from rnnsweep.sweep.recording import RecordingSink
        from rnnsweep.tracking import Tracker

        tracker = self.tracker = Tracker(self.tracking.uri, self.tracking.experiment)
        # Records an earlier sweep's store could not take, before the reaper judges its runs.
        for line in journal.replay(tracker):
            print(f"rnnsweep: {line}", flush=True)
        lease.reap_lost_sweeps(tracker)
        if self.multirun:
            parent = self.parent = tracker.start_run(
                self.name, tags={**self._parent_tags, **lease.lease_tags()})
            tracker.log(parent, params=self._parent_params)
            self._heartbeat = lease.Heartbeat(tracker, parent)
            _load_report()
            print(f"rnnsweep: sweep '{self.name}' -> MLflow parent run {parent} "
                  f"(experiment '{self.tracking.experiment}' at {tracker.uri})", flush=True)
        self.journal = journal.Journal(tracker, {
            "parent": self.parent, "name": self.name, "tags": self._parent_tags,
            "params": self._parent_params, "started": self.started_at})
        self.recording = RecordingSink(
            tracker, self.parent,
            int(OmegaConf.select(self.tracking, "live_queue", default=100_000)), self.journal)
        self.sinks.sinks += [self.recording, self.terminal]

    @property
    def records(self) -> bool:
        return self.tracker is not None

    def own_ray(self, embedded: bool) -> None:
        """This process started Ray: it stops it at the end, and an embedded Ray is ended
        by a watchdog if this process dies first."""
        self._owns_ray = True
        if embedded:
            from rnnsweep.sweep import watchdog

            self._watchdog = watchdog.start(os.getpid())

    # --- the sink the context is itself: counts for the summary and the exit status ------

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        self.n_submitted += len(trials)

    def started(self, idx: int, info: dict | None = None) -> None:
        pass

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        self.reused_runs[idx] = run_id

    def finished(self, idx: int, record: TrialRecord) -> None:
        self.n_finished += 1
        self.n_failed += record.outcome == FAILED
        self.n_killed += record.outcome in (TIMED_OUT, KILLED)

    def cancelled(self, idx: int, reason: str, outcome: str = KILLED) -> None:
        if self.limit_reason and reason == self.limit_reason:
            self.n_cut += 1
        else:
            self.n_killed += 1

    def record_here(self, name: str, record: TrialRecord, fingerprint: str) -> None:
        """A trial that ran in this process (a single run, Hydra's basic launcher)."""
        self.open()
        record.tags[FINGERPRINT_TAG] = fingerprint
        idx = next(self._local_idx)
        self.sinks.submitted([TrialInfo(idx, name)])
        self.sinks.finished(idx, record)

    @property
    def exit_status(self) -> int:
        return 1 if self.n_failed or self.n_killed or self.kept_records else 0

    # --- closing -------------------------------------------------------------------------

    def __enter__(self) -> SweepContext:
        return self

    def __exit__(self, kind, error, tb) -> None:
        try:
            stopped = self.close(error)
        except Interrupted as exc:
            # A signal in the instant before the close held them: closed all the same.
            stopped = self.close(exc) or exc
        if isinstance(stopped, Interrupted) and stopped is not error:
            # A signal that a library swallowed, or one that came during the closing
            # report, still ends the command as a signal does (one line, 128 + signum).
            raise stopped from None

    def close(self, error: BaseException | None = None) -> BaseException | None:
        """Ends the sweep: the summary and report when it ran to the end, then the final
        statuses of the parent and of any run left open, then Ray. Returns what ended
        it (``error``, or the signal behind it), and forgets that signal: a later sweep
        in this process starts clean.

        Signals are held from its first line to its last, so that whatever arrives, and
        however often, the statuses it writes are final: the closing table and report
        may be cut short by one (it raises there), anything else is noted, and the
        command then ends as that signal ends it."""
        if self._closed:
            return None
        with interrupts.deferred() as noted:
            self._closed = True
            error = self._close(interrupts.as_interrupt(error))
        if noted and not isinstance(error, Interrupted):
            error = Interrupted(noted[0])
        return error

    def _close(self, error: BaseException | None) -> BaseException | None:
        try:
            with interrupts.raising():
                self.sinks.ended()  # the terminal's closing table, before the summary line
        except Interrupted as exc:
            error = exc
        stopping = self._stop_ray_in_background()
        if self.journal is not None and self.recording is not None and (
                not self.recording.timed_out):
            # A store that failed mid-sweep may be back by now. Not while a write may
            # still be running: it would be written twice.
            self.journal.retry()
        if _ran_to_end(error) and self.parent and self.journal is not None and (
                self.journal.pending or self.journal.lost):
            # The store lacks some of the sweep's records: a summary read from it would
            # disagree with the table above; these are the trials as this command saw them.
            print(f"rnnsweep: {self.n_finished}/{self.n_submitted} trials finished, "
                  f"{self.n_failed} failed (parent run {self.parent})", flush=True)
        elif ((_ran_to_end(error) or isinstance(error, interrupts.Lost)) and self.parent
              and self.tracker is not None):
            try:
                # A signal cuts the summary and report short between their store calls.
                with interrupts.held() as check:
                    self.summary = finish_sweep(self, self.tracker, self.parent, check)
            except Interrupted as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - the parent is closed below anyway
                log.warning("the sweep's summary failed: %s", exc)
        with interrupts.deferred() as noted:
            try:
                self._close_runs(error)
            except Exception as exc:  # noqa: BLE001 - the lease lets the next command close them
                log.warning("could not close the sweep's runs: %s", exc)
            if self._heartbeat is not None:
                self._heartbeat.stop()
            if stopping is not None:
                stopping.join()
            self._close_journal()
            if self._watchdog is not None and self._watchdog.stdin is not None:
                self._watchdog.stdin.close()  # Ray is down: the watchdog finds nothing
        interrupts.forget()
        if noted and not isinstance(error, Interrupted):
            # It waited for the final statuses to be written; the command still ends
            # as that signal ends it.
            error = Interrupted(noted[0])
        return error

    def _close_journal(self) -> None:
        if self.journal is None or self.tracker is None:
            return
        cause, counts = self.journal.cause, self.journal.counts()
        if self.journal.close():
            self.kept_records = True
            kept = [f"{counts[kind]} {label}" for kind, label in (
                ("record", "trial record(s)"), ("fail", "cancelled trial(s)"),
                ("end", "the sweep's end")) if counts.get(kind)]
            what = "the sweep's records" if self.journal.lost else ", ".join(kept)
            # A deleted store's sweep goes into the new one a sweep makes; the report only
            # reads a store that exists.
            who = ("the next sweep run here" if self.journal.lost else
                   "the next rnnsweep command run here (or python -m rnnsweep.report)")
            print(f"rnnsweep: the store {self.tracker.uri} failed ({cause}): {what} kept in "
                  f"{self.journal.path}; {who} writes them", flush=True)

    def _close_runs(self, error: BaseException | None) -> None:
        if self.tracker is None:
            return
        if _ran_to_end(error):
            status, reason = None, ""
        elif isinstance(error, interrupts.Lost):  # the sweep's Ray failed, not the user
            status, reason = "FAILED", error.reason
        elif isinstance(error, Interrupted):
            status, reason = "KILLED", error.reason
        else:
            status, reason = "FAILED", _describe(error)
        if status and self.recording is not None:
            self.n_killed += self.recording.close_open_runs(reason, status)
        elif self.recording is not None and self.recording.open:
            # Trials whose record could not be written (the sink warned why) end FAILED,
            # never RUNNING under a finished parent.
            self.n_failed += self.recording.close_open_runs(
                "its record could not be written to the store", "FAILED")
        if self.parent is None:
            return
        final = status or ("FAILED" if self.exit_status else "FINISHED")
        number = None if self.journal is None else self.journal.add(
            {"kind": "end", "status": final, "reason": reason})
        try:
            self.tracker.check_intact()
            if self.journal is not None:  # not after the last try failed: it waits there
                self.journal.check_up()
            if status:
                self.tracker.fail_run(self.parent, reason, status=status)
            else:
                self.tracker.client.set_terminated(self.parent, final)
        except Exception as exc:
            if self.journal is None:
                raise
            self.journal.failed(exc)
            return
        if self.journal is not None and number is not None:
            self.journal.done(number)

    def _stop_ray_in_background(self) -> threading.Thread | None:
        """Shutting Ray down mostly waits for its processes to exit; the report is
        written meanwhile."""
        if not self._owns_ray:
            return None
        import ray

        if not ray.is_initialized():
            return None
        from rnnsweep.sweep import cluster

        return cluster.shutdown()  # and keeps the signal handlers Ray's shutdown resets


def _ran_to_end(error: BaseException | None) -> bool:
    return error is None or (isinstance(error, SystemExit) and error.code in (0, None))


def _describe(error: BaseException | None) -> str:
    if isinstance(error, SystemExit):
        # Hydra prints what raised (the sweeper, a callback) and exits 1.
        return (f"the sweep ended with exit status {error.code}: the sweeper, a callback or "
                "Hydra raised (see its output)")
    return f"the sweep raised {type(error).__name__}: {error}"[:4000]


def _load_report() -> None:
    """The closing report's modules (matplotlib: 27 MB and half a second), loaded when
    the sweep opens rather than when it closes: the driver takes its size at the start,
    where a machine short of memory says so before the trials, and the close is that
    much quicker. A report that cannot load is the close's warning, not the sweep's end."""
    try:
        import rnnsweep.report.build  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.debug("the report's modules did not load: %s", exc)


def _terminal() -> SweepSink:
    """The console: a live display on a terminal, one line per trial in a log."""
    return ConsoleSink()
