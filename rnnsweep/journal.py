"""Records the store could not take, kept on local disk till the next command writes them.

A store can fail in the middle of a sweep: another writer holds a SQLite file's lock for a
minute, its disk fills, someone deletes it, a server goes away. The trials' results are
still in the driver's hands, and losing them because the store was briefly unavailable
would make a sweep of hours worth nothing. So every trial's record (and every run's end)
is first appended here, as a JSON line, and marked done once the store has it: a write
ahead of the store, in ``.rnnsweep-journal/`` of the directory the sweep ran from, beside
its ``multirun/`` output. A sweep whose every write landed deletes its journal. What is
left is written by the next rnnsweep command run from that directory against the same
store (a sweep, or ``python -m rnnsweep.report``), before it reads or reaps anything.

A SQLite file deleted under a running sweep still takes writes (into the deleted file):
the tracker notices that its file is gone, and the whole journal is written again into
the new store the next sweep opens (the report reads only a store that exists).

A store that failed is not asked again at once: each write would wait out the same
outage (MLflow gives a locked SQLite file 20 s a write, and the driver writes SQLite
itself, so the sweep stood still 20 s a record). For ``BACKOFF_S`` seconds after a
failure, doubling with each failure up to ``BACKOFF_MAX_S``, writes go to the journal
alone; the first write after that tries the store again, and one that lands ends it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from mlflow.exceptions import MlflowException

from rnnsweep import text
from rnnsweep.record import TrialRecord
from rnnsweep.tracking import StoreLost, Tracker

log = logging.getLogger(__name__)

DIRECTORY = ".rnnsweep-journal"
SUFFIX = ".jsonl"
_SEQUENCE = itertools.count()  # several sweeps in one process (the API) get a file each
# How long after a failed write the store is left alone, at first and at most.
BACKOFF_S, BACKOFF_MAX_S = 30.0, 300.0


class StoreDown(ConnectionError):
    """A write not tried: the store failed moments ago (see the module's docstring)."""


class Journal:
    """One sweep's write-ahead journal. ``add`` enters what is about to be written and
    returns its number, ``done`` marks it written; ``pending`` are those not yet in the
    store. The file is made at the first entry, and held locked while the sweep runs."""

    def __init__(self, tracker: Tracker, sweep: dict[str, Any],
                 directory: Path | None = None) -> None:
        self.tracker = tracker
        self.directory = directory or Path.cwd() / DIRECTORY
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = self.directory / f"{stamp}-{os.getpid()}-{next(_SEQUENCE)}{SUFFIX}"
        self._header = {"kind": "sweep", "store": tracker.uri,
                        "experiment": tracker.experiment, **sweep}
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._closed = False
        self._next = 0
        self.pending: dict[int, dict[str, Any]] = {}  # number -> entry, till written
        self._runs: dict[int, str] = {}  # trial -> its run, for a retry
        self.cause = ""  # the first reason a write failed
        self.lost = False  # the store's file went away under the sweep
        self.broken = False  # the journal itself could not be written
        self._backoff, self._retry_at = BACKOFF_S, 0.0

    def add(self, entry: dict[str, Any]) -> int:
        with self._lock:
            number = self._next
            self._next += 1
            self._append({"n": number, **entry})
            self.pending[number] = entry
            return number

    def note(self, entry: dict[str, Any]) -> None:
        """A fact the replay needs (a trial's run id), that is not itself written."""
        with self._lock:
            self._append(entry)
            if entry.get("kind") == "run":
                self._runs[entry["trial"]] = entry["run_id"]

    def done(self, number: int) -> None:
        with self._lock:
            self._append({"kind": "done", "n": number})
            self.pending.pop(number, None)
        self.up()

    def up(self) -> None:
        """A write landed: the store is asked again from now on."""
        with self._lock:
            self._backoff, self._retry_at = BACKOFF_S, 0.0

    def check_up(self) -> None:
        """Raises :class:`StoreDown` while the store is left alone after a failure."""
        if time.monotonic() < self._retry_at:
            raise StoreDown(f"not tried: the store failed moments ago ({self.cause})")

    def failed(self, error: BaseException | None) -> None:
        """A write of the store's failed: its entry stays pending, and the store is left
        alone for a while. The first cause is said once now, and named again by the
        sweep's last line."""
        with self._lock:  # writer threads fail at once
            if isinstance(error, StoreDown):
                return  # not tried: neither a cause nor a new failure
            if isinstance(error, StoreLost) and not self.lost:
                self.lost = True
                self.cause = ""  # what failed before was this, in other words
            first = not self.cause
            if first:
                self.cause = text.first_line(str(error)) if error else "unknown"
            now = time.monotonic()
            if now >= self._retry_at:  # not the writes already under way as it failed
                self._retry_at = now + self._backoff
                self._backoff = min(2 * self._backoff, BACKOFF_MAX_S)
        if first:
            log.warning("the store %s failed (%s): the sweep's records are kept in %s till "
                        "it takes them", self.tracker.uri, self.cause, self.path)

    def pending_trials(self) -> set[int]:
        with self._lock:
            return {e["trial"] for e in self.pending.values() if "trial" in e}

    def counts(self) -> dict[str, int]:
        """Pending entries by kind (record, fail, end)."""
        with self._lock:
            kinds = [e["kind"] for e in self.pending.values()]
        return {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}

    def retry(self) -> None:
        """Writes the pending entries again (the store may be back by the sweep's end),
        whether or not the store is being left alone: this is the sweep's last try."""
        with self._lock:
            if self.lost or not self.pending:
                return
            todo = [self._header, *({"kind": "run", "trial": t, "run_id": r}
                                    for t, r in self._runs.items()),
                    *({"n": n, **e} for n, e in sorted(self.pending.items()))]
        try:
            _replay(self.tracker, self, todo)
        except Exception as exc:  # noqa: BLE001 - they stay for the next command
            self.failed(exc)
            log.info("the journal's records could not be written yet: %s", exc)

    def close(self) -> bool:
        """Deletes the journal when the store has everything; True if it was kept. A
        write still running after this (a store that hung) is replayed by the next
        command onto the run it made."""
        with self._lock:
            if self._file is None:
                self._closed = True
                return False
            if self.lost:  # what the deleted file took is written again, all of it
                self._append({"kind": "lost", "reason": self.cause})
            self._closed = True
            self._file.close()
            self._file = None
            if (self.pending or self.lost) and not self.broken:
                return True
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the last journal here: no empty folder left
                self.directory.rmdir()
            return False

    def _append(self, entry: dict[str, Any]) -> None:
        if self._closed or self.broken:
            return
        try:
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                opened = self.path.open("x", encoding="utf-8")
                # Held while the sweep runs: another command here never replays a journal
                # whose sweep is still writing it.
                fcntl.flock(opened, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _write_line(opened, self._header)
                self._file = opened
            _write_line(self._file, entry)
        except OSError as exc:
            # A journal that cannot be written (a read-only or full working directory)
            # must not cost the record itself: the store write goes on without it.
            self.broken = True
            log.warning("the journal %s cannot be written (%s): records the store does not "
                        "take would be lost", self.path, text.first_line(str(exc)))


def _write_line(file: IO[str], entry: dict[str, Any]) -> None:
    """One write of the whole line: a process killed mid-entry leaves at most that entry
    torn, which the replay skips."""
    file.write(json.dumps(entry, separators=(",", ":")) + "\n")
    file.flush()


def _entries(raw: str) -> list[dict[str, Any]]:
    entries = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):  # a line torn by a kill or a full disk
            entries.append(json.loads(line))
    return entries


def record_entry(record: TrialRecord) -> dict[str, Any]:
    data = asdict(record)
    data["artifacts"] = {k: base64.b64encode(v).decode() for k, v in record.artifacts.items()}
    data["sparse_metrics"] = {k: {str(s): v for s, v in steps.items()}
                              for k, steps in record.sparse_metrics.items()}
    return data


def _record(data: dict[str, Any]) -> TrialRecord:
    data = dict(data)
    data["artifacts"] = {k: base64.b64decode(v) for k, v in data["artifacts"].items()}
    data["sparse_metrics"] = {k: {int(s): v for s, v in steps.items()}
                              for k, steps in data["sparse_metrics"].items()}
    return TrialRecord(**data)


def replay(tracker: Tracker, directory: Path | None = None) -> list[str]:
    """Writes every journal left in ``directory`` for this store; returns a line for each
    (written, or why not yet). A journal is deleted once the store has all of it."""
    directory = directory or Path.cwd() / DIRECTORY
    lines = []
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else ():
        try:
            # Never created here (another command may just have written and deleted it),
            # read only under its lock, and deleted before the lock goes.
            descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(descriptor, "r+", encoding="utf-8") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its sweep is still running, or another command replays it
            if os.fstat(held.fileno()).st_nlink == 0:
                continue  # written and deleted meanwhile
            entries = _entries(held.read())
            if not entries or entries[0].get("store") != tracker.uri:
                continue  # another store's
            try:
                written = _replay(tracker, held, entries)
            except Exception as exc:  # noqa: BLE001 - kept for the next command
                lines.append(f"the records kept in {path} could not be written to "
                             f"{tracker.uri} yet ({text.first_line(str(exc))}); they stay")
                continue
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()
        lines.append(f"wrote {written} record(s) of an earlier sweep that its store could "
                     f"not take then, from {path}")
    return lines


def _replay(tracker: Tracker, out: IO[str] | Journal, entries: list[dict[str, Any]]) -> int:
    header, body = entries[0], entries[1:]
    lost = [i for i, e in enumerate(body) if e.get("kind") == "lost"]
    after_loss = body[lost[-1] + 1:] if lost else body
    done = {e["n"] for e in after_loss if e.get("kind") == "done"}
    made = {e["trial"]: e["run_id"] for e in after_loss if e.get("kind") == "run"}
    parents = {e["old"]: e["run_id"] for e in after_loss if e.get("kind") == "parent"}
    todo = [e for e in body if e.get("kind") in ("record", "fail", "end") and e["n"] not in done]
    if not todo:
        return 0
    client = tracker.client
    found = client.get_experiment_by_name(header["experiment"])
    experiment_id = (found.experiment_id if found
                     else client.create_experiment(header["experiment"]))

    def note(entry: dict[str, Any]) -> None:  # a run this replay made, for the next one
        if isinstance(out, Journal):
            out.note(entry)
        else:
            _write_line(out, entry)

    def parent() -> str | None:
        old = header.get("parent")
        if not old:
            return None
        if old not in parents:
            parents[old] = old
            if not _exists(tracker, old):  # the store was lost, and the parent with it
                parents[old] = tracker.start_run(
                    header.get("name", "sweep"), tags=header.get("tags", {}),
                    start_time=header.get("started"), experiment_id=experiment_id)
                note({"kind": "parent", "old": old, "run_id": parents[old]})
                tracker.log(parents[old], params=header.get("params", {}))
        return parents[old]

    for entry in todo:
        kind = entry["kind"]
        if kind in ("record", "fail"):
            run_id = made.get(entry["trial"])
            existed = run_id is not None and _exists(tracker, run_id)
            if not existed:
                run_id = tracker.start_run(entry["name"], tags=entry["tags"],
                                           parent_run_id=parent(),
                                           start_time=entry.get("started"),
                                           experiment_id=experiment_id)
                made[entry["trial"]] = run_id
                note({"kind": "run", "trial": entry["trial"], "run_id": run_id})
            assert run_id is not None
            if kind == "record":
                record = _record(entry["record"])
                # Onto the run it was made for, only what that run lacks of its series;
                # params again even there (the same values are accepted, and its making
                # may have failed before they were logged).
                tracker.write_record(run_id, record, with_params=True,
                                     logged=_in_store(tracker, run_id, record)
                                     if existed else None)
            else:
                if entry.get("params"):
                    tracker.log(run_id, params=entry["params"])
                tracker.fail_run(run_id, entry["reason"], status=entry["status"],
                                 outcome=entry.get("outcome"))
        else:
            run_id = parent()
            if run_id is not None and entry.get("reason"):
                tracker.fail_run(run_id, entry["reason"], status=entry["status"])
            elif run_id is not None:
                tracker.client.set_terminated(run_id, entry["status"])
        if isinstance(out, Journal):
            out.done(entry["n"])
        else:
            _write_line(out, {"kind": "done", "n": entry["n"]})
    return sum(e["kind"] in ("record", "fail") for e in todo)


def _in_store(tracker: Tracker, run_id: str, record: TrialRecord) -> Callable[[str, int], bool]:
    """Which steps of the record's series the run has already (its live values)."""
    have = {name: {m.step for m in tracker.client.get_metric_history(run_id, name)}
            for name in record.step_metrics.keys() | record.sparse_metrics.keys()}
    return lambda name, step: step in have.get(name, ())


def _exists(tracker: Tracker, run_id: str) -> bool:
    try:
        tracker.client.get_run(run_id)
    except MlflowException:
        return False
    return True
