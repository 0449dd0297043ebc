"""Store writes off the driver's critical path: a few threads, each trial's writes in order.

A trial's run is made, fed its live values, given its record and ended, in that order;
two trials' writes are independent. Against a tracking server each write is a round trip
of tens of milliseconds, and done one after another on the driver's thread they were
the whole cost of a trial (0.43 s a trial into a PostgreSQL-backed server, issue 21).
``Lanes`` runs the writes of one key (a trial) in the order they were given, on one of
``workers`` threads, and different keys side by side.

Writes that carry values (``size``, a running trial's per-step values) are bounded: past
``capacity`` values queued, the oldest such write is dropped and told so, since its
trial's final record fills in what it held. Other writes (runs, records) are never
dropped: past ``backlog`` of them queued, ``submit`` waits for room, so a store slower
than the trials slows the sweep down rather than filling the driver's memory.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Write:
    """``run`` writes; ``failed`` hears why, when it raised or was dropped unrun."""

    run: Callable[[], object]
    failed: Callable[[BaseException | None], object] | None = None
    size: int = 0  # values it carries: only writes with values are dropped for room


class Lanes:
    def __init__(self, workers: int, capacity: int, backlog: int = 64,
                 name: str = "rnnsweep-writer", inline: bool = False) -> None:
        """``inline``: writes without values run on the caller's thread (after what
        their key has queued); only values go to the one writer thread."""
        self.capacity, self.backlog, self.inline = capacity, backlog, inline
        self._unsized = 0  # writes without values, queued or running
        # A key is in _lanes while it has writes queued or one running; in _ready while it
        # has writes queued and none running (one write of a key at a time).
        self._lanes: dict[Hashable, collections.deque[Write]] = {}
        self._ready: collections.deque[Hashable] = collections.deque()
        self._busy: set[Hashable] = set()
        self._sized: collections.deque[tuple[Hashable, Write]] = collections.deque()
        self._values = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, write: Write) -> None:
        if self.inline and not write.size:
            # On the caller's thread, after the key's queued values: one writer at a time
            # is all a SQLite file takes, and a thread of its own only adds hand-offs.
            self.drain(key)
            try:
                write.run()
            except Exception as exc:  # noqa: BLE001 - as on a writer thread
                log.debug("a store write failed: %s", exc)
                _tell(write, exc)
            return
        dropped: list[Write] = []
        with self._cond:
            if not write.size:
                self._cond.wait_for(lambda: self._unsized < self.backlog or self._closed)
                self._unsized += 1
            if write.size:
                while self._sized and self._values + write.size > self.capacity:
                    old_key, old = self._sized.popleft()
                    self._unqueue(old_key, old)
                    dropped.append(old)
                self._sized.append((key, write))
                self._values += write.size
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = collections.deque()
            if not lane and key not in self._busy:
                self._ready.append(key)
            lane.append(write)
            self._cond.notify_all()
        for old in dropped:  # outside the lock: the callback may take the sink's own
            _tell(old, None)

    def drain(self, key: Hashable | None = None, timeout: float | None = None) -> bool:
        """Waits until nothing of ``key`` (of any key, if None) is queued or being
        written; False if ``timeout`` came first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._lanes if key is None else key not in self._lanes, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Writes what is queued, then ends the threads; False if ``timeout`` came first
        (what is left is never written: the caller closes those runs itself)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        done = self.drain(timeout=timeout)
        if not done:
            dropped: list[Write] = []
            with self._cond:  # the workers stop after their current write
                for key in list(self._lanes):
                    dropped += self._lanes[key]
                    self._lanes[key].clear()
                    if key not in self._busy:
                        del self._lanes[key]
                self._unsized = sum(1 for key in self._busy)
                self._ready.clear()
                self._sized.clear()
                self._values = 0
                self._cond.notify_all()
            for write in dropped:
                _tell(write, TimeoutError(f"not written within {timeout:.0f} s of the end"))
        return done

    def _unqueue(self, key: Hashable, write: Write) -> None:
        lane = self._lanes[key]
        lane.remove(write)
        self._values -= write.size
        if not lane and key not in self._busy:
            del self._lanes[key]
            self._ready.remove(key)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ready or (self._closed and not self._lanes))
                if not self._ready:
                    return
                key = self._ready.popleft()
                write = self._lanes[key].popleft()
                self._busy.add(key)
                if write.size:
                    self._sized.remove((key, write))
                    self._values -= write.size
            try:
                write.run()
            except Exception as exc:  # noqa: BLE001 - a failed write is its owner's to handle
                log.debug("a store write failed: %s", exc)
                _tell(write, exc)
            with self._cond:
                self._busy.discard(key)
                if not write.size:
                    self._unsized -= 1
                if self._lanes[key]:
                    self._ready.append(key)
                else:
                    del self._lanes[key]
                self._cond.notify_all()


def _tell(write: Write, error: BaseException | None) -> None:
    if write.failed is None:
        return
    try:
        write.failed(error)
    except Exception as exc:  # noqa: BLE001 - a callback's failure never ends a writer
        log.warning("handling a failed store write failed: %s", exc)
