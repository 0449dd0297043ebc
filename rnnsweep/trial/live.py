"""A running trial's window to the outside: the per-step values it reports as it goes,
and a request to stop it, crossing between the training thread and whoever watches it.

Pure trial logic (no Ray, no MLflow). Under the Ray launcher the worker activates one
``Live`` per trial, sends what it collects to the driver every
``tracking.live_interval_s`` and passes on the driver's stop requests; elsewhere (a
trial called from Python) none is active and nothing is collected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

Row = tuple[int, dict[str, float]]  # (training step, metric -> value)


@dataclass(frozen=True)
class StopRequest:
    outcome: str  # the record's outcome: STOPPED, TIMED_OUT, KILLED
    reason: str


class Live:
    def __init__(self) -> None:
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        # Read by the training loop once per step: a plain attribute, no lock (a stale
        # read costs one step).
        self.stop: StopRequest | None = None
        # The latest checkpoint not yet sent on (checkpoint.store=artifacts): its file.
        self.saved: str | None = None

    def checkpoint_saved(self, path: str) -> None:
        self.saved = path

    def take_saved(self) -> str | None:
        path, self.saved = self.saved, None
        return path

    def log(self, step: int, values: dict[str, float]) -> None:
        with self._lock:
            self._rows.append((step, values))

    def log_history(self, series: dict[str, list[float]],
                    sparse: dict[str, dict[int, float]], upto: int) -> None:
        """Steps before ``upto`` (a resumed trial's past, from its checkpoint), in order."""
        rows: dict[int, dict[str, float]] = {}
        for name, values in series.items():
            for step, value in enumerate(values[:upto]):
                rows.setdefault(step, {})[name] = value
        for name, points in sparse.items():
            for step, value in points.items():
                if step < upto:
                    rows.setdefault(step, {})[name] = value
        with self._lock:
            self._rows[:0] = sorted(rows.items())

    def drain(self) -> list[Row]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def request_stop(self, outcome: str, reason: str) -> None:
        if self.stop is None:
            self.stop = StopRequest(outcome, reason)


_active: Live | None = None


def active() -> Live | None:
    return _active


@contextmanager
def activated(live: Live) -> Iterator[Live]:
    """``live`` is the active one while the block runs (one trial per process at a time)."""
    global _active
    _active = live
    try:
        yield live
    finally:
        _active = None
