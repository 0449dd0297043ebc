"""The store's writer lanes: each trial's writes in order, trials side by side, bounded."""

from __future__ import annotations

import threading
import time

from rnnsweep.sweep.lanes import Lanes, Write


def test_one_keys_writes_run_in_order_and_keys_run_side_by_side():
    lanes = Lanes(workers=3, capacity=1000)
    done: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    inside = threading.Barrier(3, timeout=5)

    def write(key: str, n: int) -> Write:
        def run() -> None:
            if n == 0:
                inside.wait()  # three keys' first writes at once, or this raises
            time.sleep(0.001)
            done[key].append(n)
        return Write(run)

    for n in range(20):
        for key in done:
            lanes.submit(key, write(key, n))
    assert lanes.close(timeout=10)
    assert done == {key: list(range(20)) for key in done}
    assert not inside.broken


def test_a_failed_write_is_told_why_and_the_lane_goes_on():
    lanes = Lanes(workers=1, capacity=10)
    heard: list[str] = []
    after: list[int] = []

    def boom() -> None:
        raise RuntimeError("database is locked")

    lanes.submit(1, Write(boom, failed=lambda exc: heard.append(str(exc))))
    lanes.submit(1, Write(lambda: after.append(1)))
    assert lanes.drain(timeout=5)
    assert heard == ["database is locked"] and after == [1]
    lanes.close(timeout=5)


def test_past_capacity_the_oldest_write_with_values_is_dropped_and_told():
    lanes = Lanes(workers=1, capacity=10)
    gate = threading.Event()
    written: list[str] = []
    dropped: list[str] = []

    lanes.submit("slow", Write(lambda: gate.wait(5)))  # holds the only writer
    for name in ("first", "second", "third"):
        lanes.submit("live", Write(lambda n=name: written.append(n), size=4,
                                   failed=lambda exc, n=name: dropped.append(n)))
    # A write without values (a record) is never dropped for room.
    lanes.submit("live", Write(lambda: written.append("record")))
    gate.set()
    assert lanes.close(timeout=5)
    assert dropped == ["first"]
    assert written == ["second", "third", "record"]


def test_close_gives_up_after_its_timeout_and_drops_the_rest():
    lanes = Lanes(workers=1, capacity=10)
    gate = threading.Event()
    written: list[int] = []
    lanes.submit(0, Write(lambda: gate.wait(5)))
    lanes.submit(0, Write(lambda: written.append(1)))
    assert not lanes.close(timeout=0.2)
    gate.set()
    time.sleep(0.2)
    assert written == []


def test_a_store_slower_than_the_trials_holds_the_driver_back_instead_of_queueing_all():
    lanes = Lanes(workers=1, capacity=10, backlog=2)
    gate = threading.Event()
    lanes.submit(0, Write(lambda: gate.wait(5)))  # running
    lanes.submit(1, Write(lambda: None))  # queued: the backlog is full
    waited = threading.Event()

    def third() -> None:
        lanes.submit(2, Write(lambda: None))
        waited.set()

    threading.Thread(target=third, daemon=True).start()
    assert not waited.wait(0.3)  # submit waits for room
    gate.set()
    assert waited.wait(5)
    assert lanes.close(timeout=5)


def test_inline_writes_run_on_the_callers_thread_after_their_keys_queued_values():
    lanes = Lanes(workers=1, capacity=100, inline=True)
    gate = threading.Event()
    order: list[str] = []
    lanes.submit("a", Write(lambda: (gate.wait(5), order.append("live a")), size=1))
    threading.Timer(0.2, gate.set).start()
    lanes.submit("a", Write(lambda: order.append(f"record a on {threading.current_thread().name}")))
    assert order == ["live a", f"record a on {threading.current_thread().name}"]
    assert lanes.close(timeout=5)
