"""A sweep's parent run carries a lease: the driver's host and process, and a heartbeat.

A driver that dies without closing its sweep (SIGKILL, power loss) leaves the parent and
its trials RUNNING. The next rnnsweep command on the store finds such parents and closes
them and their running children KILLED, with the reason "driver lost"; a resume then
reruns those trials, since only finished ones are reused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from rnnsweep.contract import (
    LEASE_HEARTBEAT_TAG,
    LEASE_HOST_TAG,
    LEASE_PID_START_TAG,
    LEASE_PID_TAG,
    from_tag,
    to_tag,
)

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# A driver on another host is judged lost only by its silence.
STALE_S = 8 * HEARTBEAT_S
LOST_REASON = "driver lost"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def lease_tags() -> dict[str, str]:
    pid = os.getpid()
    return {LEASE_HOST_TAG: socket.gethostname(), LEASE_PID_TAG: to_tag(pid),
            LEASE_PID_START_TAG: process_start(pid) or "",
            LEASE_HEARTBEAT_TAG: to_tag(time.time(), decimals=0)}


def is_lost(tags: dict[str, str], now: float | None = None) -> bool:
    if LEASE_HOST_TAG not in tags:
        return False  # a sweep from before leases: nothing says whose it is
    if tags[LEASE_HOST_TAG] == socket.gethostname():
        start = process_start(from_tag(tags.get(LEASE_PID_TAG), int, 0))
        return start is None or start != tags.get(LEASE_PID_START_TAG)
    beat = from_tag(tags.get(LEASE_HEARTBEAT_TAG), float, 0.0)
    return (now or time.time()) - beat > STALE_S


def reap_lost_sweeps(tracker) -> list[str]:
    """Closes every sweep on the store whose driver is gone; returns their parent ids."""
    lost = [run for run in tracker.running_sweeps() if is_lost(run.data.tags)]
    for parent in lost:
        # Read to the end before any is changed: the pages are offsets into the result.
        running = [child.info.run_id for child in tracker.children(parent.info.run_id)
                   if child.info.status == "RUNNING"]
        for run_id in running:
            tracker.fail_run(run_id, LOST_REASON, status="KILLED")
        tracker.fail_run(parent.info.run_id, LOST_REASON, status="KILLED")
        log.warning("sweep %s (%s) lost its driver (pid %s on %s): marked KILLED",
                    parent.info.run_id, parent.info.run_name, parent.data.tags.get(LEASE_PID_TAG),
                    parent.data.tags.get(LEASE_HOST_TAG))
    return [p.info.run_id for p in lost]


class Heartbeat:
    """Renews the lease every HEARTBEAT_S seconds from a daemon thread."""

    def __init__(self, tracker, run_id: str) -> None:
        self._tracker, self._run_id = tracker, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rnnsweep-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._tracker.client.set_tag(self._run_id, LEASE_HEARTBEAT_TAG,
                                             to_tag(time.time(), decimals=0))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next time
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
