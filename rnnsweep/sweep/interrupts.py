"""SIGINT, SIGTERM and SIGHUP (the terminal closed) end a sweep in order: runs marked
KILLED, one line, no traceback.

Each raises :class:`Interrupted`, a ``BaseException`` so that no library's
``except Exception`` (Hydra's job runner, MLflow's retries) swallows it, and the sweep
context sees it wherever the main thread happens to be.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The first stopping signal this process received. A handler that raises inside a C
# extension (Ray's wait loop checks for signals) comes back wrapped in another error, or
# is swallowed by a library; this says a signal arrived whatever became of the raise.
_received: list[int] = []


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended


def _raise(signum, frame) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def received() -> Interrupted | None:
    """The signal that stopped this process, if one did."""
    return Interrupted(_received[0]) if _received else None


def forget() -> None:
    """Called once a sweep has ended on the signal: a later sweep in this process (a
    Python caller of Hydra's launcher API may run several) is not marked KILLED by it."""
    _received.clear()


def as_interrupt(error: BaseException | None) -> BaseException | None:
    """``error``, or the interrupt behind it when a signal arrived."""
    if isinstance(error, Interrupted):
        return error
    return received() or error


def install() -> None:
    """Installs Python's handlers. Called again once Ray has started: Ray's core worker
    installs a C++ SIGTERM handler that dumps native stacks and exits."""
    for signum in SIGNALS:
        signal.signal(signum, _raise)


@contextmanager
def deferred() -> Iterator[list[int]]:
    """While the sweep writes its final statuses, a further signal is noted, not raised,
    so that the parent run is never left half closed. Yields the signals noted."""
    noted: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum))
                for s in SIGNALS}
    try:
        yield noted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def held() -> Iterator[None]:
    """A signal arriving inside the block (a store write, which a library might wrap or
    swallow mid-transaction) is raised as soon as the block is done."""
    with deferred() as noted:
        yield
    if noted:
        _received.append(noted[0])
        raise Interrupted(noted[0])
