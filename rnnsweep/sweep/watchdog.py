"""``python -m rnnsweep.sweep.watchdog DRIVER_PID``: ends the embedded Ray when its
driver dies.

A SIGKILLed driver cannot stop the Ray it started, and Ray's own processes outlive it
by 30 to 95 s (its agents poll for their parent). The driver starts this small process
right after Ray and keeps the write end of its stdin; the kernel closes that end when
the driver dies, however it dies, so the read below returns at once. The watchdog then
kills the processes the driver had started (Ray's head processes) and everything below
them (raylet's workers and agents). Only the process tree of the driver's own children
is touched, checked by start time, so a reused PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def start(driver_pid: int) -> subprocess.Popen:
    """Started by the driver after Ray: watches ``driver_pid``'s children as they are now."""
    return subprocess.Popen([sys.executable, "-m", "rnnsweep.sweep.watchdog", str(driver_pid)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            # Out of the terminal's process group: a Ctrl-C is the
                            # driver's to handle, and must not end the watchdog first.
                            start_new_session=True)


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process we can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _tree(roots: dict[int, str]) -> list[int]:
    """The roots still alive as they were (same start time), and all their descendants."""
    table = _table()
    found = [pid for pid, start in roots.items() if table.get(pid, (0, ""))[1] == start]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    i = 0
    while i < len(found):
        found += children.get(found[i], [])
        i += 1
    return found


def main() -> None:
    driver = int(sys.argv[1])
    me = os.getpid()
    roots = {pid: start for pid, (ppid, start) in _table().items() if ppid == driver and pid != me}
    sys.stdin.buffer.read()  # EOF: the driver exited, cleanly or not
    for pid in _tree(roots):
        with contextlib.suppress(OSError):  # already gone
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
