"""The sweep context's own bookkeeping, without Ray or a store: what one sweep in a
process leaves for the next, and that every trial reaches every sink the same way."""

from __future__ import annotations

import os
import signal

import pytest

from rnnsweep.record import FAILED, OK, TrialRecord
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.context import SweepContext


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


def test_a_new_sweep_forgets_the_signal_an_earlier_sweep_in_the_process_handled():
    previous = signal.getsignal(signal.SIGINT)
    interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 1)  # the handler runs at the next bytecode; wait here
    finally:
        for signum in interrupts.SIGNALS:
            signal.signal(signum, previous if signum == signal.SIGINT else signal.SIG_DFL)
    assert interrupts.received() is not None  # the first sweep was stopped by it
    context = SweepContext(None, multirun=True)
    # Otherwise this sweep, which nobody interrupted, would close its runs KILLED.
    assert interrupts.received() is None
    assert interrupts.as_interrupt(None) is None
    assert context.exit_status == 0


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
