"""The sweep context's own bookkeeping, without Ray: what one sweep in a process leaves
for the next, that every trial reaches every sink the same way, and where a signal
during the close lands."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rnnsweep import heap
from rnnsweep.record import FAILED, OK, TrialRecord
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.context import Sinks, SweepContext


class Heard:
    """A sink that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def submitted(self, trials):
        self.events += [("submitted", t.idx, t.name) for t in trials]

    def started(self, idx):
        self.events.append(("started", idx))

    def reused(self, idx, run_id, info=None):
        self.events.append(("reused", idx, run_id))

    def finished(self, idx, record):
        self.events.append(("finished", idx, record.outcome))

    def cancelled(self, idx, reason):
        self.events.append(("cancelled", idx, reason))


def _swallowed_sigint() -> None:
    """SIGINT arrives while a library runs, and the library swallows the raise (Hydra
    turns an error in a job into its own exit): only the signal's note remains."""
    previous = signal.getsignal(signal.SIGINT)
    interrupts.install()
    try:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 1)  # the handler runs at the next bytecode: wait here
        except interrupts.Interrupted:
            pass  # the library's doing
    finally:
        for signum in interrupts.SIGNALS:
            signal.signal(signum, previous if signum == signal.SIGINT else signal.SIG_DFL)


def test_a_swallowed_signal_still_ends_the_sweep_and_not_the_next_one():
    first = SweepContext(None, multirun=True)
    _swallowed_sigint()
    assert interrupts.received() is not None
    # The sweep ends as a signal ends it (the CLI prints one line and exits 130)...
    with pytest.raises(interrupts.Interrupted) as stopped, first:
        raise SystemExit(1)  # what Hydra made of it
    assert stopped.value.signum == signal.SIGINT
    # ...and a later sweep in this process, which nobody interrupted, ends normally.
    assert interrupts.received() is None
    with SweepContext(None, multirun=True) as second:
        pass
    assert second.exit_status == 0


def test_a_signal_during_a_sink_write_that_then_fails_is_not_lost():
    """A sink's write holds a signal till it is done; a write that then fails is logged
    and the sweep goes on, but the signal it held still raises."""
    class FailsAfterTheSignal:
        def submitted(self, trials):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.2)  # noted, not raised: the write is held
            raise OSError("the write failed")

    heard = Heard()
    sinks = Sinks([FailsAfterTheSignal(), heard])
    interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted) as stopped:
            sinks.submitted([])
    finally:
        interrupts.forget()
        for signum in interrupts.SIGNALS:
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT
                          else signal.default_int_handler)
    assert stopped.value.signum == signal.SIGTERM
    assert heard.events == []  # the sweep stops there, before the next sink's write


def test_a_stop_caught_on_its_way_out_is_raised_at_the_next_check():
    _swallowed_sigint()
    try:
        with pytest.raises(interrupts.Interrupted) as stopped:
            interrupts.check()
    finally:
        interrupts.forget()
    assert stopped.value.signum == signal.SIGINT
    interrupts.check()  # forgotten: nothing to raise


def test_a_signal_during_the_closing_summary_waits_for_the_store_call_it_lands_in(
        mlflow_store):
    """A signal raised inside a store library's call can leave its connection checked out
    mid-transaction, the SQLite file locked, and the parent's final status refused: CI
    once found the parent RUNNING after two SIGTERMs in the close. The summary's write
    completes, the rest of the close is cut short, and the parent ends KILLED."""
    context = SweepContext(OmegaConf.create({"uri": mlflow_store.uri,
                                             "experiment": "rnnsweep"}), multirun=True)
    context.open()
    tracker, parent = context.tracker, context.parent
    written = []
    real_log_summary = tracker.log_summary

    def log_summary(run_id, values):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the store's call runs
        signal.sigtimedwait([], 0.2)  # Python runs the handler at its next bytecode
        real_log_summary(run_id, values)
        written.append(run_id)

    tracker.log_summary = log_summary
    with pytest.raises(interrupts.Interrupted) as stopped, context:
        pass
    assert stopped.value.signum == signal.SIGTERM
    assert written == [parent]
    run = mlflow_store.client.get_run(parent)
    assert run.info.status == "KILLED"
    assert run.data.metrics["trials"] == 0  # the summary the signal did not cut
    assert not mlflow_store.client.list_artifacts(parent)  # the report it did


def test_a_trial_run_in_the_drivers_own_process_reaches_every_sink_and_the_counts():
    context = SweepContext(None, multirun=False)
    context.open()
    heard = Heard()
    context.sinks.sinks.append(heard)
    context.record_here("batch=8", TrialRecord(params={}, outcome=OK), "fingerprint")
    context.record_here("batch=16", TrialRecord(params={}, outcome=FAILED, reason="boom"), "fp")
    assert heard.events == [("submitted", 0, "batch=8"), ("finished", 0, OK),
                            ("submitted", 1, "batch=16"), ("finished", 1, FAILED)]
    assert (context.n_submitted, context.n_finished, context.n_failed) == (2, 2, 1)
    assert context.exit_status == 1


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")
def test_the_drivers_heap_hands_back_the_holes_a_trials_garbage_leaves():
    """The pattern a long sweep leaves: much freed, a little kept between it. The freed
    memory stays in glibc's arena (resident) until it is handed back."""
    libc = heap._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(20_000)]  # 80 MB, below the mmap threshold
    for block in blocks:
        ctypes.memset(block, 1, 4096)  # resident
    kept = blocks[::100]  # the few that live on, spread through the heap
    for i, block in enumerate(blocks):
        if i % 100:
            libc.free(block)
    before = _rss_mb()
    heap.give_back()
    after = _rss_mb()
    for block in kept:
        libc.free(block)
    assert before - after > 40, (before, after)
