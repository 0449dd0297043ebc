"""The ``rnnsweep`` script and ``python -m rnnsweep``: the process's signal handlers and
environment defaults first, then the command (:mod:`rnnsweep.cli`).

The CLI's imports take a while; a signal during them (or at any later moment) ends the
command with one line, never a traceback, so the handlers go in before those imports.
"""

from __future__ import annotations

import sys

from rnnsweep import heap, logs, privacy
from rnnsweep.errors import RnnsweepError
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.interrupts import Interrupted


def main() -> None:
    interrupts.install()
    privacy.telemetry_off()  # before anything imports MLflow or Ray: both read it then
    logs.setup()  # before Ray, MLflow or matplotlib is imported: they speak on import
    heap.fewer_arenas()  # before any thread allocates (see rnnsweep.heap)
    try:
        status = _run(sys.argv[1:])
    except (Interrupted, SystemExit) as exc:
        stopped = interrupts.as_interrupt(exc)
        if not isinstance(stopped, Interrupted):
            raise
        print(f"rnnsweep: stopped by {stopped.name}; unfinished trials are marked KILLED",
              file=sys.stderr)
        status = stopped.exit_status
    sys.exit(status)


def _run(args: list[str]) -> int:
    # Imported once the handlers are in (see the module's docstring).
    from rnnsweep import cli

    try:
        return cli.run(args)
    except RnnsweepError as exc:  # the exit status follows from the class
        print(f"rnnsweep: error: {exc}", file=sys.stderr)
        return exc.exit_status
