"""``python -m rnnsweep.sweep.watchdog DRIVER_PID``: ends the embedded Ray when its
driver dies.

A SIGKILLed driver cannot stop the Ray it started, and Ray's own processes outlive it
by 30 to 95 s (its agents poll for their parent). The driver starts this small process
right after Ray and keeps the write end of its stdin; the kernel closes that end when
the driver dies, however it dies, so the watchdog wakes at once. It then kills the
processes the driver had started (Ray's head processes) and everything below them
(raylet's workers and agents), as last seen. Only that process tree is touched, each
process checked by its start time, so a reused PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

SNAPSHOT_S = 0.5


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


def _alive(processes: dict[int, str]) -> list[int]:
    """Those still running as the same process (a PID can be reused)."""
    living = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[19] == start:
            living.append(pid)
    return living


def _tree(processes: dict[int, str]) -> dict[int, str]:
    """The processes still alive as they were, and all their descendants now."""
    table = _table()
    found = {pid: start for pid, start in processes.items() if table.get(pid, (0, ""))[1] == start}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    frontier = list(found)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                frontier.append(child)
    return found


def main() -> None:
    driver = int(sys.argv[1])
    me = os.getpid()
    known = {pid: start for pid, (ppid, start) in _table().items() if ppid == driver and pid != me}
    # Ray's head processes exit soon after their driver on their own, and their children
    # (raylet's agents and workers) are then re-parented beyond reach: keep the whole
    # tree known while the driver lives.
    while not select.select([sys.stdin], [], [], SNAPSHOT_S)[0]:
        known = {pid: start for pid, start in _tree(known).items()}
    sys.stdin.buffer.read()  # EOF: the driver exited, cleanly or not
    _kill(known)
    _kill(_tree(known))  # anything started since the last look


def _kill(processes: dict[int, str]) -> None:
    for pid in _alive(processes):
        with contextlib.suppress(OSError):  # already gone
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
