"""SIGINT, SIGTERM and SIGHUP (the terminal closed) end a sweep in order: runs marked
KILLED, one line, no traceback.

Each raises :class:`Interrupted`, a ``BaseException`` so that no library's
``except Exception`` (Hydra's job runner, MLflow's retries) swallows it, and the sweep
context sees it wherever the main thread happens to be.
"""

from __future__ import annotations

import _thread
import ctypes
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, overload

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What signal.signal takes: a function, SIG_DFL or SIG_IGN.
_Handler = Callable[[int, FrameType | None], Any] | int
# Not a signal anyone sends: the main thread is told through it (``_thread.interrupt_main``
# runs its handler there, and does nothing where none is installed) that the sweep's Ray
# was lost.
LOST_SIGNAL = signal.SIGUSR2
# The first stop this process received. A handler that raises inside a C extension
# (Ray's wait loop checks for signals) comes back wrapped in another error, or is
# swallowed by a library; this says a stop arrived whatever became of the raise.
_received: list[Interrupted] = []
_lost: list[str] = []  # what was lost, for the handler that raises it


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

    @property
    def reason(self) -> str:
        """What the runs it ended say."""
        return f"interrupted ({self.name})"


class Lost(Interrupted):
    """The sweep's Ray went away under it (its raylet died): the sweep ends as a signal
    ends it, its runs marked, but as a failure (exit status 1), with its summary."""

    def __init__(self, what: str) -> None:
        BaseException.__init__(self, what)
        self.signum = LOST_SIGNAL
        self.what = what

    @property
    def name(self) -> str:
        return f"a lost Ray ({self.what})"

    @property
    def exit_status(self) -> int:
        return 1

    @property
    def reason(self) -> str:
        return self.what


def _raise(signum, frame) -> None:
    stop = Lost(_lost[0]) if signum == LOST_SIGNAL and _lost else Interrupted(signum)
    _received.append(stop)
    raise stop


def lose(what: str) -> None:
    """From any thread: the sweep's Ray is gone (``what``); the main thread raises
    :class:`Lost` at its next Python instruction (Ray's wait loop checks within its poll)."""
    _lost.append(what)
    _thread.interrupt_main(LOST_SIGNAL)


def received() -> Interrupted | None:
    """The stop that ended this process's sweep, if one did."""
    return _received[0] if _received else None


def check() -> None:
    """Raises the stop this process received, if one did: where a library (or a user's
    Hydra callback) caught the raise and went on, the sweep's loops still end on it,
    at their next turn, rather than run its trials to the end."""
    stop = received()
    if stop is not None:
        raise stop


def forget() -> None:
    """Called once a sweep has ended on the signal: a later sweep in this process (a
    Python caller of Hydra's launcher API may run several) is not marked KILLED by it."""
    _received.clear()
    _lost.clear()


@overload
def as_interrupt(error: BaseException) -> BaseException: ...
@overload
def as_interrupt(error: None) -> BaseException | None: ...
def as_interrupt(error: BaseException | None) -> BaseException | None:
    """``error``, or the interrupt behind it when a signal arrived."""
    if isinstance(error, Interrupted):
        return error
    return received() or error


def install() -> None:
    """Installs Python's handlers. Called again once Ray has started: Ray's core worker
    installs a C++ SIGTERM handler that dumps native stacks and exits."""
    for signum in (*SIGNALS, LOST_SIGNAL):
        signal.signal(signum, _raise)


def _swap(handlers: dict[int, _Handler]) -> dict[int, _Handler]:
    """Installs ``handlers`` all at once: a signal arriving meanwhile waits (blocked) and
    meets the new handler, never a mix of old and new. Returns the previous ones."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return {s: _settable(signal.signal(s, handler)) for s, handler in handlers.items()}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _settable(handler: _Handler | None) -> _Handler:
    """A previous handler as one that can be put back: Python reports one it did not
    install (set in C) as None, which it cannot set again; the default action is the
    nearest it can."""
    return signal.SIG_DFL if handler is None else handler


@contextmanager
def deferred() -> Iterator[list[int]]:
    """While the sweep writes its final statuses, a further signal is noted, not raised,
    so that the parent run is never left half closed. Yields the signals noted."""
    noted: list[int] = []
    previous = _swap({s: lambda signum, frame: noted.append(signum) for s in SIGNALS})
    try:
        yield noted
    finally:
        _swap(previous)


@contextmanager
def raising() -> Iterator[None]:
    """Inside a :func:`deferred` block, a stretch that a signal may cut short (the
    closing report): there a signal raises :class:`Interrupted` again."""
    previous = _swap({s: _raise for s in SIGNALS})
    try:
        yield
    finally:
        _swap(previous)


@contextmanager
def held() -> Iterator[Callable[[], None]]:
    """A signal arriving inside the block (a store write, which a library might wrap or
    swallow mid-transaction) is raised as soon as the block is done, or earlier where the
    block calls the function it yields: a long stretch (the closing report) is cut short
    between its store calls, never inside one. Raised inside SQLAlchemy's session or pool
    code, a signal can leave a connection checked out mid-transaction: the SQLite file's
    lock held, and the parent's final status after it refused."""
    with deferred() as noted:
        def check_noted() -> None:
            if noted:
                _received.append(Interrupted(noted[0]))
                raise _received[-1]

        try:
            yield check_noted
        finally:
            # Also where the block raised: a caller that catches the block's error (a
            # sink's failed write) would otherwise never hear of the signal.
            check_noted()


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` (x86-64 and arm64 Linux)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def keeping_handlers(work: Callable[[], object], name: str) -> threading.Thread:
    """Runs ``work`` (Ray's shutdown) in a thread that keeps this process's handling of
    SIGTERM and the others while it runs.

    Ray's shutdown resets SIGTERM to the default action as it tears its logging down
    (``RayLog::UninstallSignalAction``), from whichever thread calls it; a SIGTERM then
    ends the process on the spot, with the sweep's runs left RUNNING. Python cannot set
    a handler from another thread, so the handler Python installed is put back at the C
    level, as it was, whenever it was changed."""
    libc = _libc()
    saved = {}
    if libc is not None:
        for signum in SIGNALS:
            saved[signum] = _SigAction()
            libc.sigaction(signum, None, ctypes.byref(saved[signum]))
    done = threading.Event()

    def keep() -> None:
        if libc is None:  # nothing was saved
            return
        now = _SigAction()
        for signum, action in saved.items():
            libc.sigaction(signum, None, ctypes.byref(now))
            if now.handler != action.handler:
                libc.sigaction(signum, ctypes.byref(action), None)

    def run() -> None:
        guard = threading.Thread(target=guard_loop, name=f"{name}-signals", daemon=True)
        guard.start()
        try:
            work()
        finally:
            done.set()
            guard.join()

    def guard_loop() -> None:
        while saved:
            keep()
            if done.wait(0.005):
                keep()
                return

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
